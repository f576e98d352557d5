//! An HTTP sink that records every request: the stand-in for webhook
//! targets and HTTP dead letters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::Value;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use crate::events::percent_decode;

/// How the receiver answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Behavior {
    /// `200` to everything.
    Ok,
    /// `500` to the first N requests (all together), then `200`.
    FailFirst(usize),
    /// `500` to the first N requests for each CloudEvent id, then `200`.
    FailFirstPerEvent(usize),
    /// `500` to everything.
    AlwaysFail,
    /// This status to everything.
    Status(u16),
    /// `200`, after this delay.
    Delay(Duration),
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// Arrival order, from 0.
    pub seq: usize,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, names lowercase, values lossily decoded.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// The status the receiver answered with.
    pub status: u16,
}

impl ReceivedRequest {
    /// First value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Was it answered with a 2xx?
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The CloudEvent it carries (binary or structured mode), if any.
    pub fn event(&self) -> Option<DeliveredEvent> {
        let ct = self.header("content-type").map(str::to_string);
        let is_structured = ct.as_deref().is_some_and(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/cloudevents+json")
        });
        let mut attributes = BTreeMap::new();
        let (content_type, data) = if is_structured {
            let v: Value = serde_json::from_slice(&self.body).ok()?;
            let obj = v.as_object()?;
            for (k, v) in obj {
                if k == "data" || k == "data_base64" {
                    continue;
                }
                let s = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                attributes.insert(k.clone(), s);
            }
            let dct = attributes.get("datacontenttype").cloned();
            let data = if let Some(Value::String(b)) = obj.get("data_base64") {
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .unwrap_or_else(|_| b.as_bytes().to_vec())
            } else {
                match obj.get("data") {
                    None => Vec::new(),
                    Some(Value::String(s)) if dct.as_deref().is_some_and(|c| !is_json(c)) => {
                        s.as_bytes().to_vec()
                    }
                    Some(v) => serde_json::to_vec(v).unwrap_or_default(),
                }
            };
            (dct, data)
        } else {
            for (k, v) in &self.headers {
                if let Some(name) = k.strip_prefix("ce-") {
                    attributes.insert(name.to_string(), percent_decode(v.as_bytes()));
                }
            }
            if let Some(c) = &ct {
                attributes.insert("datacontenttype".into(), c.clone());
            }
            (ct, self.body.to_vec())
        };
        let id = attributes.get("id")?.clone();
        Some(DeliveredEvent {
            id,
            attributes,
            content_type,
            data,
            structured: is_structured,
            status: self.status,
            at: self.at,
            seq: self.seq,
        })
    }
}

fn is_json(ct: &str) -> bool {
    let e = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    e == "application/json" || e == "text/json" || e.ends_with("+json")
}

/// A CloudEvent as a receiver got it.
#[derive(Debug, Clone)]
pub struct DeliveredEvent {
    /// `id`.
    pub id: String,
    /// Every context attribute and extension, as strings (`ce-` headers
    /// percent-decoded in binary mode).
    pub attributes: BTreeMap<String, String>,
    /// `Content-Type` of the data.
    pub content_type: Option<String>,
    /// The data bytes (decoded from `data_base64` in structured mode).
    pub data: Vec<u8>,
    /// Delivered in structured mode?
    pub structured: bool,
    /// The status the receiver answered with.
    pub status: u16,
    /// Arrival time.
    pub at: Instant,
    /// Arrival order.
    pub seq: usize,
}

impl DeliveredEvent {
    /// An attribute or extension.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }

    /// Was it answered with a 2xx?
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

struct Shared {
    requests: Mutex<Vec<ReceivedRequest>>,
    behavior: Mutex<Behavior>,
    per_event: Mutex<HashMap<String, usize>>,
    notify: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A recording HTTP server on a loopback port. Dropping it stops the server.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Start on a free loopback port.
    pub async fn start(behavior: Behavior) -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the receiver")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            behavior: Mutex::new(behavior),
            per_event: Mutex::new(HashMap::new()),
            notify: Notify::new(),
        });
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::disable())
            .with_state(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Receiver {
            addr,
            shared,
            shutdown: Some(tx),
            task,
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT{path}` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Change how it answers from now on.
    pub fn set_behavior(&self, behavior: Behavior) {
        *lock(&self.shared.behavior) = behavior;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many requests so far.
    pub fn count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// Every request that carried a CloudEvent, in arrival order (failed
    /// attempts included; see [`DeliveredEvent::succeeded`]).
    pub fn events(&self) -> Vec<DeliveredEvent> {
        lock(&self.shared.requests)
            .iter()
            .filter_map(ReceivedRequest::event)
            .collect()
    }

    /// Ids of every CloudEvent received, in arrival order, repeats included.
    pub fn ids(&self) -> Vec<String> {
        self.events().into_iter().map(|e| e.id).collect()
    }

    /// Ids of CloudEvents answered with a 2xx.
    pub fn delivered_ids(&self) -> BTreeSet<String> {
        self.events()
            .into_iter()
            .filter(DeliveredEvent::succeeded)
            .map(|e| e.id)
            .collect()
    }

    /// Wait until `pred` holds for the requests so far; returns them.
    pub async fn wait_until<F>(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: F,
    ) -> anyhow::Result<Vec<ReceivedRequest>>
    where
        F: FnMut(&[ReceivedRequest]) -> bool,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            {
                let reqs = lock(&self.shared.requests);
                if pred(&reqs) {
                    return Ok(reqs.clone());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let n = self.count();
                anyhow::bail!(
                    "receiver {}: timed out after {timeout:?} waiting for {what} ({n} requests received)",
                    self.addr
                );
            }
            // Wake on a new request, or re-check now and then anyway.
            let _ =
                tokio::time::timeout((deadline - now).min(Duration::from_millis(200)), notified)
                    .await;
        }
    }

    /// Wait until every id in `ids` was received and answered with a 2xx.
    pub async fn wait_for_ids<'a, I>(&self, ids: I, timeout: Duration) -> anyhow::Result<()>
    where
        I: IntoIterator<Item = &'a String>,
    {
        let want: BTreeSet<String> = ids.into_iter().cloned().collect();
        // Incremental: each wake-up looks only at requests not seen before,
        // so waiting for n ids costs O(n), not O(n²).
        let mut missing = want.clone();
        let mut seen = 0;
        let result = self
            .wait_until(&format!("{} event ids", want.len()), timeout, |reqs| {
                for r in &reqs[seen.min(reqs.len())..] {
                    if r.succeeded()
                        && let Some(e) = r.event()
                    {
                        missing.remove(&e.id);
                    }
                }
                seen = reqs.len();
                missing.is_empty()
            })
            .await;
        if let Err(e) = result {
            let got = self.delivered_ids();
            let missing: Vec<&String> = want.difference(&got).collect();
            anyhow::bail!(
                "{e}; {} of {} ids still missing, e.g. {:?}",
                missing.len(),
                want.len(),
                missing.iter().take(10).collect::<Vec<_>>()
            );
        }
        Ok(())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let header_list: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut req = ReceivedRequest {
        seq: 0,
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string()),
        headers: header_list,
        body,
        at,
        status: 200,
    };
    let behavior = lock(&shared.behavior).clone();
    let mut delay = None;
    let status = {
        let mut reqs = lock(&shared.requests);
        let status = match &behavior {
            Behavior::Ok => 200,
            Behavior::FailFirst(n) => {
                if reqs.len() < *n {
                    500
                } else {
                    200
                }
            }
            Behavior::FailFirstPerEvent(n) => {
                let id = req.event().map(|e| e.id).unwrap_or_default();
                let mut per = lock(&shared.per_event);
                let seen = per.entry(id).or_insert(0);
                *seen += 1;
                if *seen <= *n { 500 } else { 200 }
            }
            Behavior::AlwaysFail => 500,
            Behavior::Status(s) => *s,
            Behavior::Delay(d) => {
                delay = Some(*d);
                200
            }
        };
        req.seq = reqs.len();
        req.status = status;
        reqs.push(req);
        status
    };
    shared.notify.notify_waiters();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if code.is_success() {
        "ok"
    } else {
        "receiver told to fail"
    };
    (code, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn records_and_fails_as_told() -> anyhow::Result<()> {
        let r = Receiver::start(Behavior::FailFirst(2)).await?;
        let c = reqwest::Client::new();
        let mut statuses = Vec::new();
        for i in 0..3 {
            let resp = c
                .post(r.url("/hook"))
                .header("ce-id", format!("id%20{i}"))
                .header("ce-source", "s")
                .header("content-type", "text/plain")
                .body(format!("body{i}"))
                .send()
                .await?;
            statuses.push(resp.status().as_u16());
        }
        assert_eq!(statuses, vec![500, 500, 200]);
        let evs = r.events();
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[2].id, "id 2");
        assert_eq!(evs[2].data, b"body2");
        assert!(evs[2].succeeded() && !evs[0].succeeded());
        let resp = c
            .post(r.url("/s"))
            .header("content-type", "application/cloudevents+json")
            .body(r#"{"specversion":"1.0","id":"x","source":"s","type":"t","datacontenttype":"application/octet-stream","data_base64":"AAEC"}"#)
            .send()
            .await?;
        assert_eq!(resp.status().as_u16(), 200);
        r.wait_until("4 requests", Duration::from_secs(2), |q| q.len() == 4)
            .await?;
        let ev = r.events().pop().context("structured event")?;
        assert!(ev.structured);
        assert_eq!(ev.data, vec![0u8, 1, 2]);
        assert_eq!(ev.attr("type"), Some("t"));
        assert!(r.delivered_ids().contains("x"));
        Ok(())
    }
}
