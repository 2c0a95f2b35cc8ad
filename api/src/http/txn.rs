//! `PUT /v1/txn`: up to 64 KV operations, all applied or none.
//!
//! The body is Consul's: a JSON array of `{"KV": {"Verb", "Key", "Value", "Flags",
//! "Index", "Session"}}`. A transaction with a write is one Raft entry; one that only
//! reads (`get`, `get-tree`, `check-*`) is served as a read under `?stale` or
//! `?consistent`, without an index and without blocking. The answer is 200 with
//! `{"Results": [{"KV": …}], "Errors": null}`, or 409 with every failed operation in
//! `Errors` and nothing changed. `Node`, `Service` and `Check` operations are refused
//! with 400: proconsul's transactions hold KV operations only.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use catalog::{
    Answer, Applied, Command, Consistency, KV_MAX_VALUE_SIZE, Query, TXN_MAX_OPS, TxnError, TxnOp,
    TxnOutcome, TxnVerb,
};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::catalog::field;
use super::{
    ApiError, BodyRead, Params, REQUEST_TIMEOUT, add_meta_headers, read_limited, read_request,
    to_json,
};
use crate::Context;

/// `PUT /v1/txn`.
pub(crate) async fn apply(
    State(ctx): State<Context>,
    params: Params,
    body: Body,
) -> Result<Response, ApiError> {
    let max_value = ctx.agent.kv_max_value_size;
    let max_body = max_value.max(KV_MAX_VALUE_SIZE);
    let body = read_limited(body, max_body).await.map_err(|e| match e {
        BodyRead::TooLarge => ApiError::TooLarge(format!(
            "Request body too large, max size: {max_body} bytes"
        )),
        BodyRead::Failed(why) => ApiError::BadRequest(why),
    })?;
    let ops = match parse_ops(&body, max_value)? {
        Parsed::Ops(ops) => ops,
        Parsed::Unknown(errors) => return Ok(outcome(TxnOutcome::Failed(errors), params.pretty())),
    };
    // Consul answers operations the caller may not do as errors of the transaction
    // (409, `Permission denied` for each), not as a refusal of the request. The server
    // that applies it checks again.
    if params.dc().is_none()
        && let Some(caller) = super::gate::caller(&ctx, &params).await?
    {
        let denied: Vec<TxnError> = ops
            .iter()
            .enumerate()
            .filter(|(_, op)| caller.check_txn_op(op).is_err())
            .map(|(op_index, _)| TxnError {
                op_index,
                what: "Permission denied".into(),
            })
            .collect();
        if !denied.is_empty() {
            return Ok(outcome(TxnOutcome::Failed(denied), params.pretty()));
        }
    }
    if ops.iter().all(|op| op.verb.reads_only()) {
        let mut request = read_request(&params)?;
        // A read-only transaction never blocks.
        request.options.min_index = 0;
        request.options.deadline = Instant::now() + REQUEST_TIMEOUT;
        let result = ctx
            .gateway
            .read(params.dc(), &Query::Txn(ops), request.options.clone())
            .await?;
        let Answer::Txn(answer) = result.answer else {
            return Err(ApiError::Internal(format!(
                "unexpected answer to a transaction: {:?}",
                result.answer
            )));
        };
        let mut response = outcome(answer, request.pretty);
        super::add_filtered_header(&mut response, result.filtered);
        add_meta_headers(
            &mut response,
            result.index,
            result.meta,
            request.options.consistency,
        );
        // Consul sends no index for a read-only transaction.
        response.headers_mut().remove("x-consul-index");
        if request.options.consistency == Consistency::Default {
            response
                .headers_mut()
                .remove("x-consul-effective-consistency");
        }
        return Ok(response);
    }
    let written = ctx
        .gateway
        .write(
            params.dc(),
            Command::Txn(ops),
            Instant::now() + REQUEST_TIMEOUT,
            params.principal(),
        )
        .await?;
    match written.applied {
        Applied::Txn(answer) => Ok(outcome(answer, params.pretty())),
        other => Err(ApiError::Internal(format!(
            "unexpected outcome of a transaction: {other:?}"
        ))),
    }
}

/// The command a transaction body makes (`None` for one with unknown verbs, which is
/// answered 409 without a write), for the fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn command(body: &[u8], max_value: usize) -> Result<Option<Command>, ApiError> {
    Ok(match parse_ops(body, max_value)? {
        Parsed::Ops(ops) => Some(Command::Txn(ops)),
        Parsed::Unknown(_) => None,
    })
}

/// What a body holds: operations, or verbs no one knows (each an error, as Consul
/// reports them).
enum Parsed {
    Ops(Vec<TxnOp>),
    Unknown(Vec<TxnError>),
}

fn parse_ops(body: &[u8], max_value: usize) -> Result<Parsed, ApiError> {
    let bad = |why: String| ApiError::BadRequest(format!("Failed to parse body: {why}"));
    let value: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let Value::Array(items) = value else {
        return Err(bad("the body must be a list of operations".into()));
    };
    if items.len() > TXN_MAX_OPS {
        return Err(ApiError::TooLarge(catalog::too_many(items.len())));
    }
    let mut ops = Vec::with_capacity(items.len());
    let mut unknown = Vec::new();
    for (op_index, item) in items.iter().enumerate() {
        let obj = item
            .as_object()
            .ok_or_else(|| bad(format!("operation {op_index} is not an object")))?;
        let Some(kv) = field(obj, "kv") else {
            let kind = obj.keys().next().map(String::as_str).unwrap_or("an empty");
            return Err(ApiError::BadRequest(format!(
                "operation {op_index}: {kind} operations in transactions are not supported by proconsul (KV only)"
            )));
        };
        let kv = kv
            .as_object()
            .ok_or_else(|| bad(format!("operation {op_index}: KV is not an object")))?;
        let text = |key: &str| -> Result<String, ApiError> {
            match field(kv, key) {
                None => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(bad(format!(
                    "operation {op_index}: {key} {other} is not a string"
                ))),
            }
        };
        let number = |key: &str| -> Result<u64, ApiError> {
            match field(kv, key) {
                None => Ok(0),
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| bad(format!("operation {op_index}: {key} {v} is not a number"))),
            }
        };
        let key = text("key")?;
        let value = match field(kv, "value") {
            None => Vec::new(),
            Some(Value::String(s)) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| bad(format!("operation {op_index}: Value: {e}")))?,
            Some(other) => {
                return Err(bad(format!(
                    "operation {op_index}: Value {other} is not base64 text"
                )));
            }
        };
        if value.len() > max_value {
            return Err(ApiError::TooLarge(format!(
                "Value for key {key:?} is too large ({} > {max_value} bytes)",
                value.len()
            )));
        }
        let verb_name = text("verb")?;
        let Some(verb) = TxnVerb::parse(&verb_name) else {
            unknown.push(TxnError {
                op_index,
                what: format!("unknown KV verb {verb_name:?}"),
            });
            continue;
        };
        let session = text("session")?;
        ops.push(TxnOp {
            verb,
            key,
            value,
            flags: number("flags")?,
            index: number("index")?,
            session: (!session.is_empty()).then_some(session),
        });
    }
    Ok(if unknown.is_empty() {
        Parsed::Ops(ops)
    } else {
        Parsed::Unknown(unknown)
    })
}

/// 200 with the results, or 409 with the errors.
fn outcome(answer: TxnOutcome, pretty: bool) -> Response {
    let (status, body) = match answer {
        TxnOutcome::Done(results) => (
            StatusCode::OK,
            json!({
                "Results": results
                    .iter()
                    .map(|e| json!({ "KV": super::json::kv_entry(e) }))
                    .collect::<Vec<_>>(),
                "Errors": null,
            }),
        ),
        TxnOutcome::Failed(errors) => (
            StatusCode::CONFLICT,
            json!({
                "Results": null,
                "Errors": errors
                    .iter()
                    .map(|e| json!({ "OpIndex": e.op_index, "What": e.what }))
                    .collect::<Vec<_>>(),
            }),
        ),
    };
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        to_json(&body, pretty),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Parsed, ApiError> {
        parse_ops(body.as_bytes(), 16)
    }

    #[test]
    fn consuls_body_becomes_operations() {
        let Parsed::Ops(ops) = parse(
            r#"[{"KV":{"Verb":"set","Key":"a","Value":"aGk=","Flags":3}},
                {"kv":{"verb":"check-index","key":"a","index":7}},
                {"KV":{"Verb":"lock","Key":"l","Session":"s1"}}]"#,
        )
        .unwrap() else {
            panic!("unknown verbs")
        };
        assert_eq!(ops.len(), 3);
        assert_eq!(
            (ops[0].verb, ops[0].value.as_slice(), ops[0].flags),
            (TxnVerb::Set, &b"hi"[..], 3)
        );
        assert_eq!((ops[1].verb, ops[1].index), (TxnVerb::CheckIndex, 7));
        assert_eq!(ops[2].session.as_deref(), Some("s1"));
    }

    #[test]
    fn bad_bodies_get_consuls_statuses_and_texts() {
        let refused = |body: &str| match parse(body) {
            Err(ApiError::BadRequest(t)) => (400, t),
            Err(ApiError::TooLarge(t)) => (413, t),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("accepted {body}"),
        };
        assert_eq!(refused("{").0, 400);
        assert!(refused("{").1.starts_with("Failed to parse body: "));
        let ops: Vec<String> = (0..65)
            .map(|_| r#"{"KV":{"Verb":"get","Key":"a"}}"#.into())
            .collect();
        assert_eq!(
            refused(&format!("[{}]", ops.join(","))),
            (
                413,
                "Transaction contains too many operations (65 > 64)".into()
            )
        );
        assert_eq!(
            refused(
                r#"[{"KV":{"Verb":"set","Key":"big","Value":"QUJDREVGR0hJSktMTU5PUFFSUw=="}}]"#
            ),
            (
                413,
                "Value for key \"big\" is too large (19 > 16 bytes)".into()
            )
        );
        assert_eq!(refused(r#"[{"KV":{"Verb":"set","Value":"!!"}}]"#).0, 400);
        assert_eq!(refused(r#"[{"Node":{"Verb":"get"}}]"#).0, 400);
        let Ok(Parsed::Unknown(errors)) = parse(r#"[{"KV":{"Verb":"frobnicate","Key":"a"}}]"#)
        else {
            panic!("an unknown verb is an operation error")
        };
        assert_eq!(errors[0].what, "unknown KV verb \"frobnicate\"");
    }
}
