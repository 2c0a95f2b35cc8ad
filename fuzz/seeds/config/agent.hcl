# The agent.json seed in Consul's HCL: blocks, repeated blocks, lists of objects.
datacenter = "dc1"
node_name = "machine"
data_dir = "/tmp/proconsul-fuzz-never-written"
server = true
bootstrap_expect = 3
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1 ::1"
retry_join = ["10.0.0.2", "10.0.0.3"]
encrypt = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="
ports {
  http = 8500
  dns = 8600
}
recursors = ["1.1.1.1"]
dns_config {
  node_ttl = "10s"
  service_ttl = { "*" = "5s" }
  only_passing = true
  udp_answer_limit = 3
}
node_meta {
  rack = "r1"
}
services {
  id = "db-1"
  name = "db"
  port = 5432
  checks = [
    { name = "ttl", ttl = "30s" },
    { tcp = "localhost:5432", interval = "5s", timeout = "1s" },
  ]
}
services {
  name = "web"
  port = 80
  check {
    http = "http://localhost:80/health"
    interval = "10s"
  }
}
checks {
  id = "mem"
  name = "memory"
  ttl = "60s"
}
