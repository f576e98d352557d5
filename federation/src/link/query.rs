//! Read-only questions between linked sites ([`METHOD_SITE_QUERY`]): one
//! site asks another what its replicated state says (where an event went,
//! how a target is doing). Any node of the asked site answers from its own
//! replica; the peer must belong to a linked site (by its certificate).
//!
//! The transport only carries opaque bodies: what a question means and how
//! it is answered is the node's business ([`QueryAnswerer`]). The asking
//! side ([`SiteQueryClient`]) tries the asked site's nodes one after the
//! other (starting the next when the previous one fails or is slow), all
//! within one deadline, and asks several sites in parallel.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};

use super::remote::RemoteSite;
use crate::certs::NodeIdentity;
use crate::transport::codec::codes;
use crate::transport::{Endpoint, HandlerFuture, RemoteError, Request, RequestError};

/// Method: a read-only question from a linked site (JSON body, JSON answer).
pub const METHOD_SITE_QUERY: u16 = 0x0302;

/// Answers the questions of linked sites (provided by the node).
pub trait QueryAnswerer: Send + Sync + 'static {
    /// Answer `body`, asked by a node of site `from_site` (already checked
    /// to be linked).
    fn answer(&self, from_site: String, body: Bytes) -> HandlerFuture;
}

impl<F, Fut> QueryAnswerer for F
where
    F: Fn(String, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, RemoteError>> + Send + 'static,
{
    fn answer(&self, from_site: String, body: Bytes) -> HandlerFuture {
        Box::pin(self(from_site, body))
    }
}

/// Serves [`METHOD_SITE_QUERY`]: refuses peers of sites this site has no
/// link with, hands the rest to the [`QueryAnswerer`] set with
/// [`QueryService::serve`] (until then it answers "unavailable").
pub struct QueryService {
    own_site: String,
    linked: Vec<String>,
    answerer: OnceLock<Arc<dyn QueryAnswerer>>,
}

impl std::fmt::Debug for QueryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryService")
            .field("own_site", &self.own_site)
            .field("linked", &self.linked)
            .field("serving", &self.answerer.get().is_some())
            .finish()
    }
}

impl QueryService {
    /// A service for site `own_site` answering the sites in `linked`.
    pub fn new(own_site: impl Into<String>, linked: Vec<String>) -> Arc<QueryService> {
        Arc::new(QueryService {
            own_site: own_site.into(),
            linked,
            answerer: OnceLock::new(),
        })
    }

    /// Start answering with `answerer` (the first call wins).
    pub fn serve(&self, answerer: Arc<dyn QueryAnswerer>) {
        let _ = self.answerer.set(answerer);
    }

    /// Handle one [`METHOD_SITE_QUERY`] request.
    pub async fn receive(&self, req: Request) -> Result<Bytes, RemoteError> {
        let from = req.peer.site.clone();
        if from == self.own_site || !self.linked.contains(&from) {
            tracing::warn!(peer = %req.peer, "refused a site query: no link with its site");
            return Err(RemoteError::new(
                codes::FORBIDDEN,
                format!("site {} has no link with site {from:?}", self.own_site),
            ));
        }
        let Some(answerer) = self.answerer.get().cloned() else {
            return Err(RemoteError::new(
                codes::UNAVAILABLE,
                "this node does not answer site queries yet",
            ));
        };
        answerer.answer(from, req.body).await
    }
}

/// Why a site could not answer a question.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    /// The site is not one this site has a link with.
    #[error("no link with site {0:?}")]
    NotLinked(String),
    /// The link names no node of the site.
    #[error("no nodes configured for site {0:?}")]
    NoNodes(String),
    /// A node of the site answered with an error that asking another node
    /// would not change (the question is bad, or this site is refused).
    #[error("site {site:?} refused the question: {error}")]
    Refused {
        /// The site.
        site: String,
        /// Its answer.
        error: RemoteError,
    },
    /// No node of the site answered within the deadline.
    #[error("no node of site {site:?} answered within {after:?}: {}", errors.join("; "))]
    Unanswered {
        /// The site.
        site: String,
        /// The deadline.
        after: Duration,
        /// What each node tried said, if anything.
        errors: Vec<String>,
    },
}

impl QueryError {
    /// The site concerned.
    pub fn site(&self) -> &str {
        match self {
            QueryError::NotLinked(s) | QueryError::NoNodes(s) => s,
            QueryError::Refused { site, .. } | QueryError::Unanswered { site, .. } => site,
        }
    }
}

/// Asks linked sites questions over this node's endpoint.
#[derive(Clone)]
pub struct SiteQueryClient {
    endpoint: Endpoint,
    sites: Arc<Vec<RemoteSite>>,
    /// Index of the node of each site that answered last (asked first).
    preferred: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    hedge_after: Duration,
}

impl std::fmt::Debug for SiteQueryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteQueryClient")
            .field("sites", &self.sites)
            .finish()
    }
}

/// Whether an error from a node settles the question for its whole site
/// (every node would answer the same).
fn is_final(e: &RequestError) -> Option<RemoteError> {
    match e {
        RequestError::Remote { error, .. }
            if matches!(
                error.code,
                codes::FORBIDDEN | codes::BAD_REQUEST | codes::UNKNOWN_METHOD
            ) =>
        {
            Some(error.clone())
        }
        _ => None,
    }
}

impl SiteQueryClient {
    /// A client for the linked `sites`, asking over `endpoint`.
    pub fn new(endpoint: Endpoint, sites: Vec<RemoteSite>) -> SiteQueryClient {
        SiteQueryClient {
            endpoint,
            sites: Arc::new(sites),
            preferred: Arc::default(),
            hedge_after: Duration::from_millis(400),
        }
    }

    /// Start asking the next node when the one asked has not answered
    /// after `d` (default 400 ms); a node that fails moves on at once.
    pub fn hedge_after(mut self, d: Duration) -> SiteQueryClient {
        self.hedge_after = d;
        self
    }

    /// The linked sites' names.
    pub fn sites(&self) -> impl Iterator<Item = &str> {
        self.sites.iter().map(|s| s.site.as_str())
    }

    fn set_preferred(&self, site: &str, idx: usize) {
        let mut m = match self.preferred.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        m.insert(site.to_string(), idx);
    }

    fn preferred(&self, site: &str) -> usize {
        let m = match self.preferred.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        m.get(site).copied().unwrap_or(0)
    }

    /// Ask `site` the question `body` ([`METHOD_SITE_QUERY`]); the first
    /// node to answer wins. Nodes are asked one after the other, starting
    /// with the one that answered last: the next as soon as the previous
    /// fails, or after the hedge delay; all within `deadline`.
    pub async fn ask(
        &self,
        site: &str,
        body: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, QueryError> {
        let Some(remote) = self.sites.iter().find(|s| s.site == site) else {
            return Err(QueryError::NotLinked(site.to_string()));
        };
        let n = remote.nodes.len();
        if n == 0 {
            return Err(QueryError::NoNodes(site.to_string()));
        }
        let start = Instant::now();
        let until = start + deadline;
        let first = self.preferred(site) % n;
        let mut errors = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        let mut next = 0usize;
        let mut hedge_at = start;
        loop {
            let now = Instant::now();
            if now >= until {
                break;
            }
            // Ask the next node when nothing is in flight or the one asked
            // is slow.
            if next < n && (in_flight.is_empty() || now >= hedge_at) {
                let idx = (first + next) % n;
                next += 1;
                hedge_at = now + self.hedge_after;
                let (node, addr) = remote.nodes[idx].clone();
                match NodeIdentity::new(node, site.to_string()) {
                    Ok(id) => {
                        let peer = self.endpoint.peer(id, addr);
                        let body = body.clone();
                        let left = until.saturating_duration_since(now);
                        in_flight.push(async move {
                            (
                                idx,
                                peer.request_within(METHOD_SITE_QUERY, body, left).await,
                            )
                        });
                    }
                    Err(e) => errors.push(format!("node {node}: {e}")),
                }
                continue;
            }
            if in_flight.is_empty() {
                break;
            }
            let wake = if next < n { hedge_at.min(until) } else { until };
            tokio::select! {
                done = in_flight.next() => {
                    let Some((idx, reply)) = done else { break };
                    match reply {
                        Ok(answer) => {
                            self.set_preferred(site, idx);
                            return Ok(answer);
                        }
                        Err(e) => {
                            if let Some(error) = is_final(&e) {
                                return Err(QueryError::Refused { site: site.to_string(), error });
                            }
                            errors.push(e.to_string());
                        }
                    }
                }
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        Err(QueryError::Unanswered {
            site: site.to_string(),
            after: start.elapsed(),
            errors,
        })
    }

    /// Ask every site of `sites` the same question in parallel (see
    /// [`Self::ask`]); answers in the order of `sites`.
    pub async fn ask_all(
        &self,
        sites: &[String],
        body: Bytes,
        deadline: Duration,
    ) -> Vec<(String, Result<Bytes, QueryError>)> {
        let asks = sites.iter().map(|s| {
            let body = body.clone();
            async move { (s.clone(), self.ask(s, body, deadline).await) }
        });
        futures::future::join_all(asks).await
    }
}
