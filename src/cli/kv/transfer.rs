//! `kv export` and `kv import`: keys as Consul's JSON export (`key`, `flags`, base64
//! `value`, tab-indented as Go prints it) and back.

use super::*;

pub(super) async fn export(args: ExportArgs) -> Result<(), String> {
    let key = key_argument(&args.args)?;
    let agent = args.http.agent()?;
    let pairs = agent
        .kv_list(&key, &args.http.read_options())
        .await
        .map_err(query_error)?
        .value;
    info(export_json(&pairs).as_bytes());
    Ok(())
}

/// The entries `kv export` prints as Go's `json.MarshalIndent(…, "", "\t")` does:
/// `[{"key", "flags", "value" (base64)}]`, one field a line, `[]` when there are none.
pub(super) fn export_json(pairs: &[KvPair]) -> String {
    if pairs.is_empty() {
        return "[]".into();
    }
    let entries: Vec<String> = pairs
        .iter()
        .map(|p| {
            format!(
                "\t{{\n\t\t\"key\": {},\n\t\t\"flags\": {},\n\t\t\"value\": {}\n\t}}",
                go_json_string(&p.key),
                p.flags,
                go_json_string(&base64::engine::general_purpose::STANDARD.encode(&p.value)),
            )
        })
        .collect();
    format!("[\n{}\n]", entries.join(",\n"))
}

/// One element of `kv import`'s input.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) key: String,
    pub(super) flags: u64,
    pub(super) value: String,
}

/// Reads `kv export`'s JSON as Go's `json.Unmarshal` into Consul's entries would: field
/// names in any case, other fields ignored, `null` for nothing.
pub(super) fn parse_entries(data: &str) -> Result<Vec<Entry>, String> {
    let value: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
    let list = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(list) => list,
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into Go value of type []*impexp.Entry",
                json_kind(&other)
            ));
        }
    };
    let mut entries = Vec::with_capacity(list.len());
    for item in list {
        let Value::Object(fields) = item else {
            return Err(format!(
                "json: cannot unmarshal {} into Go value of type impexp.Entry",
                json_kind(&item)
            ));
        };
        let mut entry = Entry::default();
        for (name, value) in &fields {
            let mismatch = |go_type: &str| {
                format!(
                    "json: cannot unmarshal {} into Go struct field Entry.{} of type {go_type}",
                    json_kind(value),
                    name.to_ascii_lowercase()
                )
            };
            match (name.to_ascii_lowercase().as_str(), value) {
                (_, Value::Null) => {}
                ("key", Value::String(s)) => entry.key = s.clone(),
                ("key", _) => return Err(mismatch("string")),
                ("value", Value::String(s)) => entry.value = s.clone(),
                ("value", _) => return Err(mismatch("string")),
                ("flags", Value::Number(n)) => match n.as_u64() {
                    Some(flags) => entry.flags = flags,
                    None => return Err(mismatch("uint64")),
                },
                ("flags", _) => return Err(mismatch("uint64")),
                _ => {}
            }
        }
        entries.push(entry);
    }
    Ok(entries)
}

pub(super) fn json_kind(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(n) => format!("number {n}"),
        Value::String(_) => "string".into(),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

/// Go's `path.Join(prefix, key)` (which also cleans: `a//b` is `a/b`, `a/../b` is `b`),
/// with a folder key's trailing `/` kept, as `kv import` names keys.
pub(super) fn import_key(prefix: &str, key: &str) -> String {
    let joined = match (prefix.is_empty(), key.is_empty()) {
        (true, true) => String::new(),
        (true, false) => go_clean(key),
        (false, true) => go_clean(prefix),
        (false, false) => go_clean(&format!("{prefix}/{key}")),
    };
    if key.ends_with('/') {
        joined + "/"
    } else {
        joined
    }
}

/// Go's `path.Clean`.
pub(crate) fn go_clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".into()
    } else {
        joined
    }
}

pub(super) async fn import(args: ImportArgs) -> Result<(), String> {
    let data = match args.args.as_slice() {
        [] => return Err("Error! Missing DATA argument".into()),
        [data] if data.is_empty() => return Err("Error! Empty DATA argument".into()),
        [data] => load_data(data.as_bytes()).map_err(|e| format!("Error! {e}"))?,
        more => {
            return Err(format!(
                "Error! Too many arguments (expected 1, got {})",
                more.len()
            ));
        }
    };
    let agent = args.http.agent()?;
    let entries = parse_entries(&String::from_utf8_lossy(&data))
        .map_err(|e| format!("Cannot unmarshal data: {e}"))?;
    let dc = args.http.dc();
    for entry in entries {
        let value = go_base64(entry.value.as_bytes())
            .map_err(|e| format!("Error base 64 decoding value for key {}: {e}", entry.key))?;
        let key = import_key(&args.prefix, &entry.key);
        agent
            .kv_put(&key, &value, entry.flags, None, dc)
            .await
            .map_err(|e| {
                format!(
                    "Error! Failed writing data for key {key}: {}",
                    api_error(&e)
                )
            })?;
        info(format!("Imported: {key}").as_bytes());
    }
    Ok(())
}
