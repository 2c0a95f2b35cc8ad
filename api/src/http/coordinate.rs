//! `/v1/coordinate/*`: network coordinates, as Consul's serf coordinates.
//!
//! WAN coordinates come from the WAN pool of the answering server; LAN coordinates from
//! the answering agent's LAN pool (each agent measures the members it probes). Unlike
//! Consul, LAN coordinates are not stored in the catalog, so a node this agent has not
//! probed yet has none here.

use axum::extract::{Path, State};
use axum::response::Response;
use gossip::swim::coordinate::Coordinate;
use serde::Serialize;
use std::collections::BTreeMap;

use catalog::acl::{Access, Resource};

use super::{ApiError, Params, gate, json};
use crate::Context;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeCoord<'a> {
    node: &'a str,
    segment: &'a str,
    coord: &'a Coordinate,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DatacenterCoords<'a> {
    datacenter: &'a str,
    #[serde(rename = "AreaID")]
    area_id: &'a str,
    coordinates: Vec<NodeCoord<'a>>,
}

/// `GET /v1/coordinate/datacenters`: the WAN coordinates of every datacenter's servers.
pub(crate) async fn datacenters(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    let federation = ctx.gateway.federation()?;
    let coordinates = federation.coordinates().await;
    let mut by_dc: BTreeMap<String, Vec<(&str, &Coordinate)>> = federation
        .datacenters()
        .into_iter()
        .map(|dc| (dc, Vec::new()))
        .collect();
    for (name, coord) in &coordinates {
        if let Some((_, dc)) = name.rsplit_once('.')
            && let Some(list) = by_dc.get_mut(dc)
        {
            list.push((name.as_str(), coord));
        }
    }
    let body: Vec<DatacenterCoords> = by_dc
        .iter()
        .map(|(dc, list)| DatacenterCoords {
            datacenter: dc,
            area_id: "WAN",
            coordinates: list
                .iter()
                .map(|(node, coord)| NodeCoord {
                    node,
                    segment: "",
                    coord,
                })
                .collect(),
        })
        .collect();
    Ok(json(&body, params.pretty()))
}

fn local_only(ctx: &Context, params: &Params) -> Result<(), ApiError> {
    let dc = params.get("dc");
    if ctx.gateway.is_local(dc) {
        Ok(())
    } else {
        Err(ApiError::Internal("No path to datacenter".into()))
    }
}

/// `GET /v1/coordinate/nodes`: the LAN coordinates of the nodes, by name.
pub(crate) async fn nodes(
    State(ctx): State<Context>,
    params: Params,
) -> Result<Response, ApiError> {
    local_only(&ctx, &params)?;
    let caller = gate::caller(&ctx, &params).await?;
    let coordinates = ctx.lan.coordinates().await;
    let body: Vec<NodeCoord> = coordinates
        .iter()
        .filter(|(node, _)| {
            caller
                .as_ref()
                .is_none_or(|c| c.may(Resource::Node, node, Access::Read))
        })
        .map(|(node, coord)| NodeCoord {
            node,
            segment: "",
            coord,
        })
        .collect();
    let mut response = json(&body, params.pretty());
    super::add_filtered_header(&mut response, body.len() != coordinates.len());
    Ok(response)
}

/// `GET /v1/coordinate/node/:node`: one node's LAN coordinate (404 when none is known).
pub(crate) async fn node(
    State(ctx): State<Context>,
    Path(node): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    local_only(&ctx, &params)?;
    gate::require(&ctx, &params, Resource::Node, &node, Access::Read).await?;
    let coordinates = ctx.lan.coordinates().await;
    let Some(coord) = coordinates.get(&node) else {
        return Err(ApiError::NotFound(String::new()));
    };
    let body = [NodeCoord {
        node: &node,
        segment: "",
        coord,
    }];
    Ok(json(&body, params.pretty()))
}
