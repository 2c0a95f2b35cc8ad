key_prefix "vault/" { policy = "write" }
key "vault/core/lock" { policy = "deny" }
service "vault" { policy = "write" intentions = "read" }
agent_prefix "" { policy = "read" }
session_prefix "" { policy = "write" }
operator = "read"
