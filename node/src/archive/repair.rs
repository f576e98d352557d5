//! Filling the ranges of an archive a node missed: a node brought up to
//! date by a snapshot did not apply the entries the snapshot covers, so
//! its archive store records them as a hole. This task (on every node of a
//! clustered site) asks the other members for the archived events of each
//! hole, a few MiB at a time, until none is left.

use std::time::Duration;

use strait_federation::Site;
use strait_federation::network_quic::{ArchiveFetch, Group, fetch_archive};
use strait_federation::transport::Endpoint;

/// How often holes are looked for.
const EVERY: Duration = Duration::from_secs(1);

/// Run until the process stops.
pub async fn run(site: Site, endpoint: Endpoint) {
    loop {
        tokio::time::sleep(EVERY).await;
        let archives: Vec<(String, String)> = site.state.view().archives.keys().cloned().collect();
        for (bus, name) in archives {
            while let Some((from, upto)) = site.state.archive().holes(&bus, &name).first().copied()
            {
                match fill_once(&site, &endpoint, &bus, &name, from, upto).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(bus, archive = name, from, upto, error = %e, "cannot fill a range of the archive this node missed");
                        break;
                    }
                }
            }
        }
    }
}

/// Ask each other member in turn for part of the hole `from..=upto`; true
/// once a part was filled.
async fn fill_once(
    site: &Site,
    endpoint: &Endpoint,
    bus: &str,
    name: &str,
    from: u64,
    upto: u64,
) -> Result<bool, String> {
    let members: Vec<(u64, strait_federation::NodeInfo)> = {
        let m = site.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != site.node_id)
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    };
    let mut last_err = String::from("no other member to ask");
    for (id, node) in members {
        let identity = Group::Site.identity(id, &node, &endpoint.identity().site);
        let peer = endpoint.peer(identity, node.raft_addr.clone());
        let ask = ArchiveFetch {
            bus: bus.to_string(),
            name: name.to_string(),
            from,
            upto,
        };
        match fetch_archive(&peer, &ask).await {
            Ok((events, got)) => {
                let state = site.state.clone();
                let (b, a) = (bus.to_string(), name.to_string());
                let n = events.len();
                tokio::task::spawn_blocking(move || {
                    state.archive().fill(&b, &a, from, got, &events)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
                tracing::info!(
                    archive = name,
                    from,
                    upto = got,
                    events = n,
                    peer = id,
                    "filled a range of the archive from a peer"
                );
                return Ok(true);
            }
            Err(e) => last_err = format!("node {id}: {e}"),
        }
    }
    Err(last_err)
}
