//! `GET /v1/agent/host` and `GET /v1/agent/version`: what the agent runs on, and which
//! build it is.
//!
//! `host` has Consul's shape (`Memory`, `CPU`, `Host`, `Disk`, `CollectionTime`,
//! `Errors`, with gopsutil's key names inside), read from Linux's `/proc` and a
//! `statvfs(2)` of `/`. It carries no secrets: no environment, no command line, and no
//! host ID (`hostId` is empty; the machine ID is meant to stay private to the host).
//! What cannot be read is left out and named in `Errors`, as text.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::Response;
use catalog::acl::{Access, Resource};
use serde_json::{Map, Value, json};

use super::{ApiError, Params, gate, json};
use crate::Context;

/// `/proc/meminfo` keys and the names gopsutil (and so Consul) gives them; values in kB
/// unless counted in pages.
const MEMINFO: &[(&str, &str)] = &[
    ("MemTotal", "total"),
    ("MemAvailable", "available"),
    ("MemFree", "free"),
    ("Active", "active"),
    ("Inactive", "inactive"),
    ("Buffers", "buffers"),
    ("Cached", "cached"),
    ("Writeback", "writeBack"),
    ("Dirty", "dirty"),
    ("WritebackTmp", "writeBackTmp"),
    ("Shmem", "shared"),
    ("Slab", "slab"),
    ("SReclaimable", "sreclaimable"),
    ("SUnreclaim", "sunreclaim"),
    ("PageTables", "pageTables"),
    ("SwapCached", "swapCached"),
    ("CommitLimit", "commitLimit"),
    ("Committed_AS", "committedAS"),
    ("HighTotal", "highTotal"),
    ("HighFree", "highFree"),
    ("LowTotal", "lowTotal"),
    ("LowFree", "lowFree"),
    ("SwapTotal", "swapTotal"),
    ("SwapFree", "swapFree"),
    ("Mapped", "mapped"),
    ("VmallocTotal", "vmallocTotal"),
    ("VmallocUsed", "vmallocUsed"),
    ("VmallocChunk", "vmallocChunk"),
    ("HugePages_Total", "hugePagesTotal"),
    ("HugePages_Free", "hugePagesFree"),
    ("HugePages_Rsvd", "hugePagesRsvd"),
    ("HugePages_Surp", "hugePagesSurp"),
    ("Hugepagesize", "hugePageSize"),
    ("AnonHugePages", "anonHugePages"),
];

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// `Memory` from the text of `/proc/meminfo`.
pub(crate) fn memory(meminfo: &str) -> Value {
    let mut read = BTreeMap::new();
    for line in meminfo.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(Ok(n)) = words.next().map(str::parse::<u64>) else {
            continue;
        };
        let bytes = if words.next() == Some("kB") {
            n.saturating_mul(1024)
        } else {
            n
        };
        read.insert(key.trim(), bytes);
    }
    let get = |k: &str| read.get(k).copied().unwrap_or(0);
    let mut out = Map::new();
    for (key, name) in MEMINFO {
        out.insert((*name).into(), json!(get(key)));
    }
    // gopsutil's arithmetic: what is neither free nor a reclaimable cache.
    let cached = get("Cached").saturating_add(get("SReclaimable"));
    let total = get("MemTotal");
    let used = total
        .saturating_sub(get("MemFree"))
        .saturating_sub(get("Buffers"))
        .saturating_sub(cached);
    out.insert("cached".into(), json!(cached));
    out.insert("used".into(), json!(used));
    out.insert("usedPercent".into(), json!(percent(used, total)));
    out.insert("wired".into(), json!(0));
    out.insert("laundry".into(), json!(0));
    Value::Object(out)
}

/// `CPU` from the text of `/proc/cpuinfo`: one entry per logical processor.
pub(crate) fn cpus(cpuinfo: &str) -> Value {
    let mut list = Vec::new();
    for block in cpuinfo.split("\n\n") {
        let fields: BTreeMap<&str, &str> = block
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let Some(cpu) = fields.get("processor").and_then(|p| p.parse::<u64>().ok()) else {
            continue;
        };
        let text = |k: &str| fields.get(k).copied().unwrap_or_default();
        let number = |k: &str| {
            text(k)
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let flags: Vec<&str> = text("flags").split_whitespace().collect();
        list.push(json!({
            "cpu": cpu,
            "vendorId": text("vendor_id"),
            "family": text("cpu family"),
            "model": text("model"),
            "stepping": number("stepping"),
            "physicalId": text("physical id"),
            "coreId": text("core id"),
            "cores": number("cpu cores"),
            "modelName": text("model name"),
            "mhz": text("cpu MHz").parse::<f64>().unwrap_or(0.0),
            "cacheSize": number("cache size"),
            "flags": flags,
            "microcode": text("microcode"),
        }));
    }
    Value::Array(list)
}

/// The value of `key` in `/etc/os-release` text, unquoted.
fn os_release<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim().trim_matches('"'))
        .unwrap_or_default()
}

/// Reads a file under `/proc` or `/etc`, noting a failure in `errors`.
fn read(path: &str, errors: &mut Vec<String>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            errors.push(format!("reading {path}: {e}"));
            None
        }
    }
}

fn host(now: SystemTime, errors: &mut Vec<String>) -> Value {
    let uptime = read("/proc/uptime", errors)
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| s as u64);
    let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let procs = std::fs::read_dir("/proc").map_or(0, |dir| {
        dir.filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .count()
    });
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let line = |path: &str, errors: &mut Vec<String>| {
        read(path, errors)
            .map(|t| t.trim().to_owned())
            .unwrap_or_default()
    };
    json!({
        "hostname": line("/proc/sys/kernel/hostname", errors),
        "uptime": uptime,
        "bootTime": now_secs.saturating_sub(uptime),
        "procs": procs,
        "os": std::env::consts::OS,
        "platform": os_release(&release, "ID"),
        "platformFamily": os_release(&release, "ID_LIKE").split_whitespace().next().unwrap_or_default(),
        "platformVersion": os_release(&release, "VERSION_ID"),
        "kernelVersion": line("/proc/sys/kernel/osrelease", errors),
        "kernelArch": std::env::consts::ARCH,
        "virtualizationSystem": "",
        "virtualizationRole": "",
        "hostId": "",
    })
}

/// The file system type mounted at `/`, from `/proc/mounts` (the last mount wins).
fn root_fstype(mounts: &str) -> &str {
    mounts
        .lines()
        .rev()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let (_, point, fstype) = (words.next()?, words.next()?, words.next()?);
            (point == "/").then_some(fstype)
        })
        .next()
        .unwrap_or_default()
}

fn disk(errors: &mut Vec<String>) -> Value {
    let stat = match rustix::fs::statvfs("/") {
        Ok(s) => s,
        Err(e) => {
            errors.push(format!("statvfs /: {e}"));
            return Value::Null;
        }
    };
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let unit = stat.f_frsize;
    let total = stat.f_blocks.saturating_mul(unit);
    let free = stat.f_bavail.saturating_mul(unit);
    let used = stat
        .f_blocks
        .saturating_sub(stat.f_bfree)
        .saturating_mul(unit);
    let inodes_used = stat.f_files.saturating_sub(stat.f_ffree);
    json!({
        "path": "/",
        "fstype": root_fstype(&mounts),
        "total": total,
        "free": free,
        "used": used,
        "usedPercent": percent(used, used.saturating_add(free)),
        "inodesTotal": stat.f_files,
        "inodesUsed": inodes_used,
        "inodesFree": stat.f_ffree,
        "inodesUsedPercent": percent(inodes_used, stat.f_files),
    })
}

/// Collects the host's figures (blocking file reads: run off the runtime's workers).
fn collect() -> Value {
    let now = SystemTime::now();
    let mut errors = Vec::new();
    let host = host(now, &mut errors);
    let memory = read("/proc/meminfo", &mut errors).map_or(Value::Null, |t| memory(&t));
    let disk = disk(&mut errors);
    let cpu = read("/proc/cpuinfo", &mut errors).map_or(Value::Null, |t| cpus(&t));
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    json!({
        "Memory": memory,
        "CPU": cpu,
        "Host": host,
        "Disk": disk,
        "CollectionTime": u64::try_from(nanos).unwrap_or(u64::MAX),
        "Errors": if errors.is_empty() { Value::Null } else { json!(errors) },
    })
}

/// `GET /v1/agent/host`: needs `operator:read`, as Consul.
pub(crate) async fn host_info(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    gate::require(&ctx, &params, Resource::Operator, "", Access::Read).await?;
    let info = tokio::task::spawn_blocking(collect)
        .await
        .map_err(|e| ApiError::Internal(format!("collecting host information: {e}")))?;
    Ok(json(&info, params.pretty()))
}

/// `GET /v1/agent/version`: the build, in Consul's shape (`SHA`, `BuildDate`,
/// `HumanVersion`, `FIPS`); no ACL, as Consul.
pub(crate) async fn version(State(ctx): State<Context>, params: Params) -> Response {
    let info = json!({
        "SHA": ctx.agent.revision,
        "BuildDate": "",
        "HumanVersion": ctx.agent.version,
        "FIPS": "",
    });
    json(&info, params.pretty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_read_in_bytes_with_gopsutil_s_names() {
        let text = "MemTotal:       1000 kB\nMemFree:         100 kB\nBuffers:          50 kB\nCached:          200 kB\nSReclaimable:     50 kB\nHugePages_Total:       4\nbroken line\n";
        let m = memory(text);
        assert_eq!(m["total"], 1_024_000);
        assert_eq!(m["free"], 102_400);
        assert_eq!(m["cached"], 256_000);
        assert_eq!(m["used"], 1_024 * (1000 - 100 - 50 - 250));
        assert_eq!(m["hugePagesTotal"], 4);
        assert_eq!(m["usedPercent"], 60.0);
    }

    #[test]
    fn cpuinfo_gives_one_entry_per_processor() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu MHz\t\t: 2400.5\ncache size\t: 512 KB\nflags\t\t: fpu sse\n\nprocessor\t: 1\nmodel name\t: X\n";
        let c = cpus(text);
        assert_eq!(c.as_array().unwrap().len(), 2);
        assert_eq!(c[0]["vendorId"], "GenuineIntel");
        assert_eq!(c[0]["mhz"], 2400.5);
        assert_eq!(c[0]["cacheSize"], 512);
        assert_eq!(c[0]["flags"], json!(["fpu", "sse"]));
        assert_eq!(c[1]["modelName"], "X");
    }

    #[test]
    fn the_root_file_system_is_the_last_mount_on_slash() {
        let mounts = "rootfs / rootfs rw 0 0\n/dev/sda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\n";
        assert_eq!(root_fstype(mounts), "ext4");
        assert_eq!(
            os_release("ID=\"debian\"\nVERSION_ID=\"12\"", "VERSION_ID"),
            "12"
        );
    }

    #[test]
    fn the_collection_has_consul_s_blocks_and_no_host_id() {
        let info = collect();
        for key in ["Memory", "CPU", "Host", "Disk", "CollectionTime", "Errors"] {
            assert!(info.get(key).is_some(), "{key}");
        }
        assert_eq!(info["Host"]["hostId"], "");
    }
}
