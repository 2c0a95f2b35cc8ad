//! `proconsul kv get|put|delete|export|import`: Consul's key/value verbs, with its flags,
//! its output lines and its exit codes (0 on success, 1 on any error, the message on
//! stderr).
//!
//! Flags come before arguments, as with Go's flag package: the first word that is not
//! a flag (or the value of one) ends them, so `kv put key -x` stores `-x` and
//! `kv get key -detailed` is two arguments ([`go_flag_order`]). Boolean flags take Go's
//! forms too: `-recurse` or `-recurse=false`.
//!
//! `kv put -acquire -session=ID` takes a key's lock for a session (`/v1/session/create`
//! makes one) and `-release` gives it back, with Consul's lines.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::ExitCode;

use base64::Engine;
use clap::{ArgAction, Args, Subcommand};
use serde_json::Value;

use super::ClientArgs;
use proconsul::client::{AgentClient, ClientError, Consistency, KvPair, QueryOptions};
use proconsul::watch::go_json_string;

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Retrieves or lists data from the KV store
    Get(GetArgs),
    /// Sets or updates data in the KV store
    Put(PutArgs),
    /// Removes data from the KV store
    Delete(DeleteArgs),
    /// Exports a tree from the KV store as JSON
    Export(ExportArgs),
    /// Imports a tree stored as JSON to the KV store
    Import(ImportArgs),
}

/// The agent to ask, and the datacenter and consistency of reads (Consul's HTTP flags).
#[derive(Args, Debug)]
pub struct HttpArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Datacenter to ask (default: the agent's)
    #[arg(long)]
    pub datacenter: Option<String>,
    /// Lets any server answer a read, even without a leader (ignored by writes)
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub stale: bool,
}

impl HttpArgs {
    fn agent(&self) -> Result<AgentClient, String> {
        self.client
            .agent()
            .map_err(|e| format!("Error connecting to Consul agent: {}", api_error(&e)))
    }

    pub(super) fn dc(&self) -> Option<&str> {
        self.datacenter.as_deref().filter(|dc| !dc.is_empty())
    }

    fn read_options(&self) -> QueryOptions {
        QueryOptions {
            datacenter: self.dc().map(str::to_owned),
            consistency: if self.stale {
                Consistency::Stale
            } else {
                Consistency::Default
            },
            ..QueryOptions::default()
        }
    }
}

#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    /// Prints values base64-encoded
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub base64: bool,
    /// Prints every field of the key (indexes, flags, session), not only its value
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub detailed: bool,
    /// Lists the names of the keys under the prefix, not their values
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub keys: bool,
    /// Reads every key that starts with the given prefix
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub recurse: bool,
    /// With -keys, lists names only up to the first separator past the prefix ("" for none)
    #[arg(long, default_value = "/")]
    pub separator: String,
    /// The key, or the prefix with -recurse and -keys (default: the whole store)
    #[arg(value_name = "KEY_OR_PREFIX")]
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PutArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    /// Check-and-set: writes only if the key's ModifyIndex is -modify-index (0: only if
    /// the key does not exist)
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub cas: bool,
    /// An unsigned number stored with the key, for the clients' own use
    #[arg(long, default_value = "0", value_parser = go_uint)]
    pub flags: u64,
    /// DATA is base64-encoded
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub base64: bool,
    /// The ModifyIndex -cas expects
    #[arg(long = "modify-index", default_value = "0", value_parser = go_uint)]
    pub modify_index: u64,
    /// The session for -acquire and -release
    #[arg(long)]
    pub session: Option<String>,
    /// Takes the key's lock for -session
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub acquire: bool,
    /// Gives back -session's lock on the key
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub release: bool,
    /// KEY, then DATA: the value, @FILE for a file's contents, - for stdin (default: empty)
    #[arg(value_name = "KEY [DATA]")]
    pub args: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    /// Check-and-set: deletes only if the key's ModifyIndex is -modify-index
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub cas: bool,
    /// The ModifyIndex -cas expects
    #[arg(long = "modify-index", default_value = "0", value_parser = go_uint)]
    pub modify_index: u64,
    /// Deletes every key that starts with the given prefix
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          hide_default_value = true, hide_possible_values = true)]
    pub recurse: bool,
    /// The key, or the prefix with -recurse
    #[arg(value_name = "KEY_OR_PREFIX")]
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    /// Exports the keys that start with this prefix (default: the whole store)
    #[arg(value_name = "PREFIX")]
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    /// Prepended to every imported key (joined with "/")
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// What `kv export` printed: the JSON itself, @FILE, or - for stdin
    #[arg(value_name = "DATA")]
    pub args: Vec<String>,
}

/// The kv flags that take a value; the rest are booleans (`-name` or `-name=value`).
const VALUE_FLAGS: &[&str] = &[
    "http-addr",
    "datacenter",
    "separator",
    "flags",
    "modify-index",
    "session",
    "prefix",
];

/// Go's flag order for `kv` verbs: flags end at the first word that is neither a flag
/// nor a flag's value (`-` included), or at `--`. A `--` is put before that word, so
/// that what follows is taken as arguments, even words that begin with `-`.
pub fn go_flag_order(args: Vec<OsString>) -> Vec<OsString> {
    if args.len() < 3 || args[1] != "kv" {
        return args;
    }
    super::end_go_flags(args, 3, VALUE_FLAGS)
}

/// An unsigned number as Go's flag package reads one: decimal, `0x…`, `0o…`, `0b…`, or
/// octal with a leading `0`.
fn go_uint(text: &str) -> Result<u64, String> {
    let lower = text.to_ascii_lowercase();
    let (digits, radix) = if let Some(d) = lower.strip_prefix("0x") {
        (d, 16)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (d, 8)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (d, 2)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (&lower[1..], 8)
    } else {
        (lower.as_str(), 10)
    };
    if digits.is_empty() || digits.starts_with('+') {
        return Err("parse error".into());
    }
    u64::from_str_radix(digits, radix).map_err(|_| "parse error".to_owned())
}

pub async fn run(command: KvCommand) -> anyhow::Result<ExitCode> {
    let done = match command {
        KvCommand::Get(args) => get(args).await,
        KvCommand::Put(args) => put(args).await,
        KvCommand::Delete(args) => delete(args).await,
        KvCommand::Export(args) => export(args).await,
        KvCommand::Import(args) => import(args).await,
    };
    Ok(match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(1)
        }
    })
}

/// One line of output, its bytes as they are (a value need not be text).
fn info(line: &[u8]) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not worth a panic.
    let _ = out.write_all(line).and_then(|()| out.write_all(b"\n"));
}

/// A failed request as Consul's CLI words it.
pub(super) fn api_error(e: &ClientError) -> String {
    match e {
        ClientError::Http { status, message } => {
            format!("Unexpected response code: {status} ({message})")
        }
        ClientError::Transport(text) | ClientError::Decode(text) => text.clone(),
    }
}

fn query_error(e: ClientError) -> String {
    format!("Error querying Consul agent: {}", api_error(&e))
}

/// The single optional KEY of `get`, `delete` and `export`, without one leading `/`.
fn key_argument(args: &[String]) -> Result<String, String> {
    match args {
        [] => Ok(String::new()),
        [key] => Ok(key.strip_prefix('/').unwrap_or(key).to_owned()),
        _ => Err(format!(
            "Too many arguments (expected 1, got {})",
            args.len()
        )),
    }
}

async fn get(args: GetArgs) -> Result<(), String> {
    let key = key_argument(&args.args)?;
    if key.is_empty() && !(args.recurse || args.keys) {
        return Err("Error! Missing KEY argument".into());
    }
    let agent = args.http.agent()?;
    let options = args.http.read_options();
    if args.keys && !args.recurse {
        let keys = agent
            .kv_keys(&key, Some(&args.separator), &options)
            .await
            .map_err(query_error)?;
        for k in keys.value {
            info(k.as_bytes());
        }
        return Ok(());
    }
    if args.recurse {
        let pairs = agent
            .kv_list(&key, &options)
            .await
            .map_err(query_error)?
            .value;
        for (i, pair) in pairs.iter().enumerate() {
            if args.detailed {
                info(&detailed(pair, args.base64, args.keys));
                if i + 1 < pairs.len() {
                    info(b"");
                }
            } else if args.keys {
                info(pair.key.as_bytes());
            } else {
                let mut line = format!("{}:", pair.key).into_bytes();
                line.extend(shown_value(pair, args.base64));
                info(&line);
            }
        }
        return Ok(());
    }
    let Some(pair) = agent
        .kv_get(&key, &options)
        .await
        .map_err(query_error)?
        .value
    else {
        return Err(format!("Error! No key exists at: {key}"));
    };
    if args.detailed {
        info(&detailed(&pair, args.base64, false));
    } else {
        info(&shown_value(&pair, args.base64));
    }
    Ok(())
}

fn shown_value(pair: &KvPair, base64: bool) -> Vec<u8> {
    if base64 {
        base64::engine::general_purpose::STANDARD
            .encode(&pair.value)
            .into_bytes()
    } else {
        pair.value.clone()
    }
}

/// `kv get -detailed`: a label column as wide as the longest label and 6 spaces, then
/// the field, laid out as Consul's (Go's tabwriter) would; `-keys -recurse -detailed`
/// leaves the value out.
fn detailed(pair: &KvPair, base64: bool, keys_only: bool) -> Vec<u8> {
    let mut text = format!(
        "CreateIndex\t{}\nFlags\t{}\nKey\t{}\nLockIndex\t{}\nModifyIndex\t{}\nSession\t{}\n",
        pair.create_index,
        pair.flags,
        pair.key,
        pair.lock_index,
        pair.modify_index,
        pair.session.as_deref().unwrap_or("-"),
    )
    .into_bytes();
    if !keys_only {
        text.extend_from_slice(b"Value\t");
        text.extend(shown_value(pair, base64));
    }
    tabwrite(&text, 6)
}

/// Go's `text/tabwriter` with no minimum width, `padding` spaces and no flags: cells end
/// at a tab, and the cells of a column in consecutive lines are padded to the widest of
/// them; the last cell of a line is never padded. Widths count characters (an invalid
/// UTF-8 byte counts as one).
pub fn tabwrite(text: &[u8], padding: usize) -> Vec<u8> {
    let mut lines: Vec<Vec<&[u8]>> = text
        .split(|&b| b == b'\n')
        .map(|line| line.split(|&b| b == b'\t').collect())
        .collect();
    // After the last newline, an empty trailing cell is no cell at all.
    if let Some(last) = lines.last_mut()
        && last.last().is_some_and(|cell| cell.is_empty())
    {
        last.pop();
    }
    let mut out = Vec::with_capacity(text.len() + 64);
    format_block(&mut out, &lines, &mut Vec::new(), 0, lines.len(), padding);
    out
}

/// Lays out `lines[line0..line1]`, whose first `widths.len()` columns are already sized.
fn format_block(
    out: &mut Vec<u8>,
    lines: &[Vec<&[u8]>],
    widths: &mut Vec<usize>,
    mut line0: usize,
    line1: usize,
    padding: usize,
) {
    let column = widths.len();
    let mut this = line0;
    while this < line1 {
        // Only a cell followed by another one in its line belongs to a column.
        if column + 1 >= lines[this].len() {
            this += 1;
            continue;
        }
        write_lines(out, lines, widths, line0, this);
        line0 = this;
        let mut width = 0;
        while this < line1 && column + 1 < lines[this].len() {
            width = width.max(char_count(lines[this][column]) + padding);
            this += 1;
        }
        widths.push(width);
        format_block(out, lines, widths, line0, this, padding);
        widths.pop();
        line0 = this;
    }
    write_lines(out, lines, widths, line0, line1);
}

fn write_lines(
    out: &mut Vec<u8>,
    lines: &[Vec<&[u8]>],
    widths: &[usize],
    line0: usize,
    line1: usize,
) {
    for (i, line) in lines.iter().enumerate().take(line1).skip(line0) {
        for (j, cell) in line.iter().enumerate() {
            out.extend_from_slice(cell);
            if let Some(width) = widths.get(j) {
                let pad = width.saturating_sub(char_count(cell));
                out.extend(std::iter::repeat_n(b' ', pad));
            }
        }
        if i + 1 < lines.len() {
            out.push(b'\n');
        }
    }
}

fn char_count(bytes: &[u8]) -> usize {
    bytes
        .utf8_chunks()
        .map(|chunk| chunk.valid().chars().count() + chunk.invalid().len())
        .sum()
}

/// DATA as Consul reads it: `@FILE` is the file's bytes, `-` is stdin, anything else
/// (`-x` too) is the value itself.
fn load_data(data: &[u8]) -> Result<Vec<u8>, String> {
    match data {
        [b'@', path @ ..] => read_file(&bytes_to_os(path)),
        b"-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut buf)
                .map_err(|e| format!("Failed to read stdin: {}", go_io_text(&e)))?;
            Ok(buf)
        }
        _ => Ok(data.to_vec()),
    }
}

fn bytes_to_os(bytes: &[u8]) -> OsString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(bytes).to_owned()
}

/// Reads a file; errors name the step and the file as Go's `os.ReadFile` does
/// (`open x: no such file or directory`).
fn read_file(path: &std::ffi::OsStr) -> Result<Vec<u8>, String> {
    let shown = path.to_string_lossy();
    let mut file = std::fs::File::open(path)
        .map_err(|e| format!("Failed to read file: open {shown}: {}", go_io_text(&e)))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)
        .map_err(|e| format!("Failed to read file: read {shown}: {}", go_io_text(&e)))?;
    Ok(buf)
}

/// An I/O error in Go's words: the system's text, lower-cased first letter, without
/// Rust's ` (os error N)`.
pub(super) fn go_io_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Base64 as Go's `StdEncoding.DecodeString` takes it: padding required, line breaks
/// skipped, stray bits in the last character tolerated. Errors give the offset of the
/// bad byte in the input, as Go's do.
fn go_base64(input: &[u8]) -> Result<Vec<u8>, String> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const GO_STD: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    );
    let kept: Vec<usize> = (0..input.len())
        .filter(|&i| input[i] != b'\n' && input[i] != b'\r')
        .collect();
    let text: Vec<u8> = kept.iter().map(|&i| input[i]).collect();
    GO_STD.decode(&text).map_err(|e| {
        let at = |offset: usize| kept.get(offset).copied().unwrap_or(input.len());
        match e {
            base64::DecodeError::InvalidByte(offset, _)
            | base64::DecodeError::InvalidLastSymbol { offset, .. } => {
                format!("illegal base64 data at input byte {}", at(offset))
            }
            // A missing or misplaced `=`: Go points at the end of the input.
            base64::DecodeError::InvalidLength(_) | base64::DecodeError::InvalidPadding => {
                format!("illegal base64 data at input byte {}", input.len())
            }
        }
    })
}

async fn put(args: PutArgs) -> Result<(), String> {
    let (key, data) = match args.args.as_slice() {
        [] => return Err("Error! Missing KEY argument".into()),
        [key] => (key, Vec::new()),
        [key, data] => {
            use std::os::unix::ffi::OsStrExt;
            let data = load_data(data.as_bytes()).map_err(|e| format!("Error! {e}"))?;
            (key, data)
        }
        more => {
            return Err(format!(
                "Error! Too many arguments (expected 1 or 2, got {})",
                more.len()
            ));
        }
    };
    let Some(key) = key.to_str() else {
        return Err("Error! KEY is not valid UTF-8".into());
    };
    let value = if args.base64 {
        go_base64(&data).map_err(|e| format!("Error! Cannot base 64 decode data: {e}"))?
    } else {
        data
    };
    let session = args.session.as_deref().unwrap_or("");
    if (args.acquire || args.release) && session.is_empty() {
        return Err("Error! Missing -session (required with -acquire and -release)".into());
    }
    let agent = args.http.agent()?;
    let dc = args.http.dc();
    if args.acquire || args.release {
        let done = agent
            .kv_lock(key, &value, args.flags, session, args.acquire, dc)
            .await
            .map_err(|e| format!("Error! Failed writing data: {}", api_error(&e)))?;
        let (yes, no) = if args.acquire {
            ("Success! Lock acquired on", "Error! Did not acquire lock")
        } else {
            ("Success! Lock released on", "Error! Did not release lock")
        };
        if !done {
            return Err(no.into());
        }
        info(format!("{yes}: {key}").as_bytes());
        return Ok(());
    }
    if args.cas {
        let written = agent
            .kv_put(key, &value, args.flags, Some(args.modify_index), dc)
            .await
            .map_err(|e| format!("Error! Did not write to {key}: {}", api_error(&e)))?;
        if !written && args.modify_index == 0 {
            return Err(format!(
                "Error! Did not write to {key}: CAS performed with index=0 and key already exists."
            ));
        }
        if !written {
            return Err(format!("Error! Did not write to {key}: CAS failed"));
        }
    } else {
        agent
            .kv_put(key, &value, args.flags, None, dc)
            .await
            .map_err(|e| format!("Error! Failed writing data: {}", api_error(&e)))?;
    }
    info(format!("Success! Data written to: {key}").as_bytes());
    Ok(())
}

async fn delete(args: DeleteArgs) -> Result<(), String> {
    let key = key_argument(&args.args)?;
    if key.is_empty() && !args.recurse {
        return Err("Error! Missing KEY argument".into());
    }
    if args.cas && args.modify_index == 0 {
        return Err(
            "Cannot delete a key that does not exist. Provide a -modify-index greater than than 0."
                .into(),
        );
    }
    if args.modify_index != 0 && !args.cas {
        return Err("Cannot specify -modify-index without -cas!".into());
    }
    if args.recurse && args.cas {
        return Err("Cannot specify both -cas and -recurse!".into());
    }
    let agent = args.http.agent()?;
    let dc = args.http.dc();
    if args.recurse {
        agent
            .kv_delete_tree(&key, dc)
            .await
            .map_err(|e| format!("Error! Did not delete prefix {key}: {}", api_error(&e)))?;
        info(format!("Success! Deleted keys with prefix: {key}").as_bytes());
        return Ok(());
    }
    if args.cas {
        let deleted = agent
            .kv_delete(&key, Some(args.modify_index), dc)
            .await
            .map_err(|e| format!("Error! Did not delete key {key}: {}", api_error(&e)))?;
        if !deleted {
            return Err(format!("Error! Did not delete key {key}: CAS failed"));
        }
    } else {
        agent
            .kv_delete(&key, None, dc)
            .await
            .map_err(|e| format!("Error deleting key {key}: {}", api_error(&e)))?;
    }
    info(format!("Success! Deleted key: {key}").as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests;
mod transfer;

pub(crate) use transfer::go_clean;
use transfer::*;
