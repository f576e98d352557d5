//! Running replays on the site's leader.
//!
//! One task per active replay reads the archive in log order from the
//! replay's replicated position, skips events outside its window, marks
//! each event with `replayname` and hands it to every target of the
//! chosen rules (each matches, transforms and delivers it with its own
//! retries and dead letter, or hands it to the link of the target's site).
//! Each target takes the events in their original order with as many in
//! flight as its `concurrency` allows, as its live worker does; the events
//! are read and handed out in chunks of [`READ_BATCH`] (the next chunk is
//! read while the targets deliver the last, and a target goes from one
//! chunk to the next without waiting), and the position moves past a chunk
//! once every target has finished it. It paces
//! itself to `dispatch.replay_max_events_per_sec` (0: no cap) and
//! writes its position through the site's log every
//! [`PROGRESS_EVERY`]; a new leader goes on from there (the events since
//! the last progress write are sent again: at least once).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use strait_federation::Command;
use strait_federation::store::state::CLOCK_SLACK_MS;

use super::{CANCELLED, CANCELLING, COMPLETED, FAILED, RUNNING, STARTING};
use crate::archive::{OpError, rfc3339};
use crate::dispatch::{Context, ReplayTarget, replay_targets};
use crate::util::{AbortOnDrop, now_ms};

/// How often a running replay writes its position.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Events read from the archive at once.
const READ_BATCH: usize = 256;

/// Run the site's active replays while this node leads (dropped when it
/// stops leading).
pub async fn lead(ctx: Arc<Context>) {
    let mut running: HashMap<String, AbortOnDrop> = HashMap::new();
    let mut config_rx = ctx.state.subscribe_config();
    loop {
        config_rx.borrow_and_update();
        let active: Vec<String> = ctx
            .state
            .view()
            .replays
            .iter()
            .filter(|(_, r)| {
                matches!(
                    r.get("state").and_then(Value::as_str),
                    Some(STARTING | RUNNING | CANCELLING)
                )
            })
            .map(|(n, _)| n.clone())
            .collect();
        running.retain(|n, h| active.contains(n) && !h.0.is_finished());
        for name in active {
            if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(name) {
                let task = tokio::spawn(run_one(ctx.clone(), slot.key().clone()));
                slot.insert(AbortOnDrop(task));
            }
        }
        tokio::select! {
            r = config_rx.changed() => if r.is_err() { return; },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// What a replay task works from.
struct Job {
    name: String,
    bus: String,
    archive: String,
    start_ms: u64,
    end_ms: u64,
    rules: Option<Vec<String>>,
    /// Last (log index, sequence) sent.
    position: Option<(u64, u64)>,
    replayed: u64,
    last_ms: Option<u64>,
}

fn job(name: &str, r: &Value) -> Job {
    let u = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
    Job {
        name: name.to_string(),
        bus: r
            .get("bus")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        archive: r
            .get("archive")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        start_ms: u("startMs"),
        end_ms: u("endMs"),
        rules: r
            .get("rules")
            .and_then(|v| serde_json::from_value(v.clone()).ok()),
        position: r
            .get("position")
            .and_then(|p| serde_json::from_value::<(u64, u64)>(p.clone()).ok()),
        replayed: u("eventsReplayed"),
        last_ms: r.get("lastReplayedMs").and_then(Value::as_u64),
    }
}

/// Write `update` into the replay; false when the replay is over (or
/// gone) and the task must stop.
async fn update(ctx: &Context, name: &str, update: Value) -> bool {
    match ctx
        .writer
        .write(Command::UpdateReplay {
            name: name.to_string(),
            update,
        })
        .await
    {
        Ok(resp) => match OpError::check(resp) {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(replay = name, error = %e, "replay stopped");
                false
            }
        },
        // Retried with the next progress write (or by the next leader).
        Err(e) => {
            tracing::debug!(replay = name, error = %e, "replay progress not written");
            true
        }
    }
}

fn progress(j: &Job) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("eventsReplayed".into(), j.replayed.into());
    if let Some(p) = j.position {
        m.insert("position".into(), json!([p.0, p.1]));
    }
    if let Some(ms) = j.last_ms {
        m.insert("lastReplayedMs".into(), ms.into());
        m.insert("lastReplayedTime".into(), rfc3339(ms).into());
    }
    m
}

async fn finish(ctx: &Context, j: &Job, state: &str, reason: Option<String>) {
    let mut m = progress(j);
    m.insert("state".into(), state.into());
    m.insert("endedAt".into(), rfc3339(now_ms()).into());
    if let Some(r) = reason {
        m.insert("stateReason".into(), r.into());
    }
    // Written until it is (or the replay is over): a leader change retries.
    for _ in 0..50 {
        match ctx
            .writer
            .write(Command::UpdateReplay {
                name: j.name.clone(),
                update: Value::Object(m.clone()),
            })
            .await
        {
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(replay = j.name, error = %e, "replay end not written yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn current_state(ctx: &Context, name: &str) -> Option<String> {
    ctx.state
        .view()
        .replays
        .get(name)
        .and_then(|r| r.get("state"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

async fn run_one(ctx: Arc<Context>, name: String) {
    let Some(spec) = ctx.state.view().replays.get(&name).cloned() else {
        return;
    };
    let mut j = job(&name, &spec);
    let state = spec.get("state").and_then(Value::as_str).unwrap_or("");
    if state == CANCELLING {
        finish(&ctx, &j, CANCELLED, None).await;
        return;
    }
    if state == STARTING {
        let started = json!({"state": RUNNING, "startedAt": rfc3339(now_ms())});
        if !update(&ctx, &name, started).await {
            return;
        }
    }
    let targets = match replay_targets(&ctx, &j.bus, j.rules.as_deref(), &name) {
        Ok(t) => t,
        Err(e) => {
            finish(&ctx, &j, FAILED, Some(e)).await;
            return;
        }
    };
    // 0: no cap (the targets' concurrency bounds the replay).
    let gap = match ctx.cfg.dispatch.replay_max_events_per_sec {
        0 => None,
        rate => Some(Duration::from_secs_f64(1.0 / rate as f64)),
    };
    let mut next_at = Instant::now();
    let mut last_write = Instant::now();
    let mut pipes = Pipes::start(&targets);
    // Read positions of chunks handed out, not finished yet at every target.
    let mut in_flight: std::collections::VecDeque<Pending> = Default::default();
    // The position the next read starts after.
    let mut read_pos = j.position;
    // Where the last read stopped in the archive's files.
    let mut read_hint = None;
    let mut next_id = 0u64;
    loop {
        match current_state(&ctx, &name).as_deref() {
            Some(CANCELLING) => {
                drop(pipes);
                finish(&ctx, &j, CANCELLED, None).await;
                return;
            }
            Some(STARTING | RUNNING) => {}
            // Over, or gone.
            _ => return,
        }
        let archive_key = (j.bus.clone(), j.archive.clone());
        if !ctx.state.view().archives.contains_key(&archive_key) {
            let why = format!("archive `{}` of bus `{}` was deleted", j.archive, j.bus);
            drop(pipes);
            finish(&ctx, &j, FAILED, Some(why)).await;
            return;
        }
        // A range this node missed (it was brought up to date by a
        // snapshot) is filled from a peer first.
        let from_index = read_pos.map_or(0, |p| p.0);
        let missing = ctx
            .state
            .archive()
            .holes(&j.bus, &j.archive)
            .iter()
            .any(|(_, hi)| *hi >= from_index);
        if missing {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let read = {
            let state = ctx.state.clone();
            let (bus, archive) = archive_key.clone();
            let (after, inclusive) = match read_pos {
                Some(p) => (p, false),
                None => ((0, 0), true),
            };
            let since = j.start_ms;
            let hint = read_hint;
            tokio::task::spawn_blocking(move || {
                state
                    .archive()
                    .read_since_from(&bus, &archive, after, inclusive, since, READ_BATCH, hint)
            })
            .await
        };
        let events = match read {
            Ok(Ok((e, hint))) => {
                read_hint = hint;
                e
            }
            Ok(Err(e)) => {
                drop(pipes);
                finish(&ctx, &j, FAILED, Some(format!("reading the archive: {e}"))).await;
                return;
            }
            Err(e) => {
                tracing::warn!(replay = name, error = %e, "archive read task failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // The events of this read that are in the window, in log order;
        // `done` once an event past the window is seen (or nothing is left).
        let mut chunk: Vec<(u64, Value)> = Vec::with_capacity(events.len());
        let mut done = events.is_empty();
        for e in events {
            if e.ingest_ms >= j.end_ms.saturating_add(CLOCK_SLACK_MS) {
                // Past the window, allowing for a new leader's clock being
                // behind the old one's: nothing later is in it.
                done = true;
                break;
            }
            read_pos = Some((e.index, e.seq));
            if e.ingest_ms < j.start_ms || e.ingest_ms >= j.end_ms {
                continue;
            }
            let mut value: Value = match serde_json::from_slice(&e.json) {
                Ok(v) => v,
                Err(err) => {
                    tracing::warn!(replay = name, seq = e.seq, error = %err, "archived event is not JSON; skipped");
                    continue;
                }
            };
            if let Value::Object(m) = &mut value {
                m.insert("replayname".into(), Value::String(name.clone()));
            }
            chunk.push((e.ingest_ms, value));
        }
        // Paced as a whole: the chunk may start once the rate allows its
        // first event, and the next one `len` gaps later.
        if let Some(gap) = gap
            && !chunk.is_empty()
        {
            let now = Instant::now();
            if next_at > now {
                tokio::time::sleep(next_at - now).await;
            }
            next_at = next_at.max(now) + gap * chunk.len() as u32;
        }
        in_flight.push_back(Pending {
            id: next_id,
            position: read_pos,
            count: chunk.len() as u64,
            last_ms: chunk.last().map(|(ms, _)| *ms),
            needed: if chunk.is_empty() { 0 } else { pipes.len() },
        });
        if !chunk.is_empty() {
            pipes.send(next_id, chunk).await;
        }
        next_id += 1;
        if done {
            // Every chunk finished at every target, then the end.
            pipes.close().await;
            pipes.settle(&mut in_flight, &mut j);
            finish(&ctx, &j, COMPLETED, None).await;
            return;
        }
        pipes.settle(&mut in_flight, &mut j);
        if last_write.elapsed() >= PROGRESS_EVERY {
            last_write = Instant::now();
            if !update(&ctx, &name, Value::Object(progress(&j))).await {
                return;
            }
        }
    }
}

/// The events of a chunk: (ingest time, event marked as replayed).
type Chunk = Vec<(u64, Value)>;

/// A chunk handed to the targets: where it ends in the archive and what
/// it holds, and how many targets have still to finish it.
struct Pending {
    id: u64,
    position: Option<(u64, u64)>,
    count: u64,
    last_ms: Option<u64>,
    needed: usize,
}

/// One delivery pipeline per target: it takes the chunks in order and
/// delivers their events in order with up to the target's `concurrency`
/// in flight, without waiting between chunks, and reports each chunk it
/// has finished. Dropped: the pipelines stop.
struct Pipes {
    senders: Vec<tokio::sync::mpsc::Sender<(u64, Chunk)>>,
    finished: tokio::sync::mpsc::UnboundedReceiver<u64>,
    tasks: Vec<AbortOnDrop>,
    /// Chunk id → targets that finished it.
    counts: HashMap<u64, usize>,
}

impl Pipes {
    fn start(targets: &[ReplayTarget]) -> Pipes {
        use futures::StreamExt as _;
        let (done_tx, finished) = tokio::sync::mpsc::unbounded_channel();
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        for t in targets {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, Chunk)>(2);
            let t = t.clone();
            let done_tx = done_tx.clone();
            let concurrency = t.concurrency().max(1);
            tasks.push(AbortOnDrop(tokio::spawn(async move {
                let chunks = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
                chunks
                    .flat_map(|(id, chunk): (u64, Chunk)| {
                        let n = chunk.len();
                        futures::stream::iter(
                            chunk
                                .into_iter()
                                .enumerate()
                                .map(move |(i, (ms, v))| (id, ms, v, i + 1 == n)),
                        )
                    })
                    .map(|(id, ms, v, last)| {
                        let t = t.clone();
                        async move {
                            t.deliver(ms, v).await;
                            last.then_some(id)
                        }
                    })
                    .buffered(concurrency)
                    .for_each(|end| {
                        if let Some(id) = end {
                            let _ = done_tx.send(id);
                        }
                        async {}
                    })
                    .await;
            })));
            senders.push(tx);
        }
        Pipes {
            senders,
            finished,
            tasks,
            counts: HashMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.senders.len()
    }

    /// Hand chunk `id` to every target (waits while a target is two chunks
    /// behind: what the replay holds stays bounded).
    async fn send(&mut self, id: u64, chunk: Chunk) {
        // Each target owns its copy (the last one takes the chunk itself):
        // a delivery moves its event, nothing is copied for one target.
        let mut chunk = Some(chunk);
        let n = self.senders.len();
        for (i, tx) in self.senders.iter().enumerate() {
            let own = if i + 1 == n {
                chunk.take()
            } else {
                chunk.clone()
            };
            if let Some(own) = own {
                let _ = tx.send((id, own)).await;
            }
        }
    }

    /// No more chunks: wait until every target has finished what it has.
    async fn close(&mut self) {
        self.senders.clear();
        for mut t in self.tasks.drain(..) {
            let _ = (&mut t.0).await;
        }
    }

    /// Move `j` past the chunks every target has finished, in order.
    fn settle(&mut self, in_flight: &mut std::collections::VecDeque<Pending>, j: &mut Job) {
        while let Ok(id) = self.finished.try_recv() {
            *self.counts.entry(id).or_default() += 1;
        }
        while let Some(front) = in_flight.front() {
            let finished = self.counts.get(&front.id).copied().unwrap_or(0);
            if finished < front.needed {
                break;
            }
            self.counts.remove(&front.id);
            j.position = front.position;
            j.replayed += front.count;
            if front.last_ms.is_some() {
                j.last_ms = front.last_ms;
            }
            in_flight.pop_front();
        }
    }
}
