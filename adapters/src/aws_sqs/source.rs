//! The `aws_sqs` source, whole: its settings ([`SqsSourceConfig`], one type
//! for the node's configuration and the API), the poller ([`run`]:
//! long-poll, convert each message — EventBridge envelope, CloudEvent or
//! anything — to a CloudEvent, hand it to the node, delete the message only
//! once committed) and the provisioning of queue, policy and EventBridge
//! rule. The poller knows only its output: the bus it names and the
//! node's [`Ingest`].

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName,
};
use serde_json::{Map, Value, json};

use crate::aws_common::{self, AwsCredential, Connection};
use crate::aws_eventbridge::mapping;
use crate::sources::{Field, Fields, Naming, SourceContext, SourceFuture, StatusCell, is_name};
use crate::{ConfigError, DeliveryError, Ingest, IngestOutcome, Offer};

/// The `type` of an SQS source.
pub const KIND: &str = "aws_sqs";

/// Fault injection for tests only: the source waits this many ms between
/// commit and delete, so a test can kill the node in between.
const DELETE_DELAY_ENV: &str = "STRAIT_TEST_AWS_SOURCE_DELETE_DELAY_MS";

const QUEUE_URL: Field = Field::new("queue_url", "queueUrl");
const CREDENTIAL: Field = Field::new("credential", "credential").with_alias("credentials");
const REGION: Field = Field::new("region", "region");
const ENDPOINT: Field = Field::new("endpoint", "endpoint");
const WAIT_TIME_SECS: Field = Field::new("wait_time_secs", "waitTimeSecs");
const VISIBILITY_TIMEOUT_SECS: Field =
    Field::new("visibility_timeout_secs", "visibilityTimeoutSecs");
const MAX_MESSAGES: Field = Field::new("max_messages", "maxMessages");
const PROVISION: Field = Field::new("provision", "provision");
const EVENT_BUS: Field = Field::new("event_bus", "eventBus");
const RULE_NAME: Field = Field::new("rule_name", "ruleName");
const EVENT_PATTERN: Field = Field::new("event_pattern", "eventPattern");

/// The settings of an SQS source, in the order they are written.
pub const FIELDS: &[Field] = &[
    QUEUE_URL,
    CREDENTIAL,
    REGION,
    ENDPOINT,
    WAIT_TIME_SECS,
    VISIBILITY_TIMEOUT_SECS,
    MAX_MESSAGES,
    PROVISION,
    EVENT_BUS,
    RULE_NAME,
    EVENT_PATTERN,
];

const DEFAULT_WAIT_TIME_SECS: i32 = 20;
const DEFAULT_VISIBILITY_TIMEOUT_SECS: i32 = 30;
const DEFAULT_MAX_MESSAGES: i32 = 10;
const DEFAULT_EVENT_BUS: &str = "default";

/// The settings of an SQS source (see docs/adapters/aws.md): one type for
/// a node-local source (`aws.sources` in the node's configuration,
/// snake_case) and a shared one (`PUT /v1/sources/{name}`, `strait apply`
/// and the stored form, camelCase); [`Naming`] says which spelling is read
/// or written. The bus the events go to is the node's, beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct SqsSourceConfig {
    /// The queue URL.
    pub queue_url: String,
    /// Name in `aws.credentials` (of the running node); absent: the
    /// standard AWS credential chain.
    pub credential: Option<String>,
    /// Region (else the environment's, else us-east-1).
    pub region: Option<String>,
    /// Endpoint override.
    pub endpoint: Option<String>,
    /// Long-poll wait, seconds (0-20).
    pub wait_time_secs: i32,
    /// How long a received message stays invisible before SQS hands it out
    /// again (it is deleted once committed), seconds (1-43200).
    pub visibility_timeout_secs: i32,
    /// Messages per receive (1-10).
    pub max_messages: i32,
    /// Create the queue, its policy, and an EventBridge rule targeting it.
    pub provision: bool,
    /// Provisioning: the EventBridge bus of the rule.
    pub event_bus: String,
    /// Provisioning: the rule name (default `strait-{name}`).
    pub rule_name: Option<String>,
    /// Provisioning: the rule's event pattern (default: every event with a
    /// `source`).
    pub event_pattern: Option<Value>,
}

impl SqsSourceConfig {
    /// Read the settings (types only: [`Self::validate`] checks the
    /// values); defaults fill what is absent. Errors name the field as
    /// `fields` spells it.
    pub fn read(fields: &Fields<'_>) -> Result<SqsSourceConfig, ConfigError> {
        Ok(SqsSourceConfig {
            queue_url: fields.required_string(QUEUE_URL)?,
            credential: fields.string(CREDENTIAL)?,
            region: fields.string(REGION)?,
            endpoint: fields.string(ENDPOINT)?,
            wait_time_secs: fields.integer(WAIT_TIME_SECS, DEFAULT_WAIT_TIME_SECS)?,
            visibility_timeout_secs: fields
                .integer(VISIBILITY_TIMEOUT_SECS, DEFAULT_VISIBILITY_TIMEOUT_SECS)?,
            max_messages: fields.integer(MAX_MESSAGES, DEFAULT_MAX_MESSAGES)?,
            provision: fields.boolean(PROVISION)?,
            event_bus: fields
                .string(EVENT_BUS)?
                .unwrap_or_else(|| DEFAULT_EVENT_BUS.into()),
            rule_name: fields.string(RULE_NAME)?,
            event_pattern: fields.value(EVENT_PATTERN),
        })
    }

    /// Read and check `map`, spelled as `naming`; keys of `envelope` are
    /// the node's (skipped here).
    pub fn parse(
        map: &Map<String, Value>,
        naming: Naming,
        envelope: &[&str],
    ) -> Result<SqsSourceConfig, ConfigError> {
        let c = Self::read(&Fields::new(map, naming, envelope, FIELDS)?)?;
        c.validate(naming)?;
        Ok(c)
    }

    /// Check every value (pure: whether a named credential exists is up to
    /// the node that runs the source). Errors name the field as `naming`
    /// spells it.
    pub fn validate(&self, naming: Naming) -> Result<(), ConfigError> {
        let field = |f: Field| f.name(naming);
        crate::aws_sqs::validate_queue_url(field(QUEUE_URL), &self.queue_url)?;
        if let Some(c) = &self.credential
            && !is_name(c)
        {
            return Err(ConfigError::new(
                field(CREDENTIAL),
                format!(
                    "{c:?} is not a valid credential name (1-64 characters of A-Z a-z 0-9 . _ -)"
                ),
            ));
        }
        aws_common::validate_region(self.region.as_deref())?;
        aws_common::validate_endpoint(self.endpoint.as_deref())?;
        if !(0..=20).contains(&self.wait_time_secs) {
            return Err(ConfigError::new(
                field(WAIT_TIME_SECS),
                "must be between 0 and 20",
            ));
        }
        if !(1..=43_200).contains(&self.visibility_timeout_secs) {
            return Err(ConfigError::new(
                field(VISIBILITY_TIMEOUT_SECS),
                "must be between 1 and 43200",
            ));
        }
        if !(1..=10).contains(&self.max_messages) {
            return Err(ConfigError::new(
                field(MAX_MESSAGES),
                "must be between 1 and 10",
            ));
        }
        if let Some(r) = &self.rule_name
            && !is_name(r)
        {
            return Err(ConfigError::new(
                field(RULE_NAME),
                format!("{r:?} is not a valid rule name (1-64 characters of A-Z a-z 0-9 . _ -)"),
            ));
        }
        if let Some(p) = &self.event_pattern
            && !p.is_object()
        {
            return Err(ConfigError::new(
                field(EVENT_PATTERN),
                "must be a JSON object",
            ));
        }
        Ok(())
    }

    /// The settings spelled as `naming`, in [`FIELDS`] order (absent
    /// optional ones left out).
    pub fn to_map(&self, naming: Naming) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |f: Field, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(f.name(naming).into(), v);
            }
        };
        put(QUEUE_URL, Some(json!(self.queue_url)));
        put(CREDENTIAL, self.credential.as_ref().map(|c| json!(c)));
        put(REGION, self.region.as_ref().map(|r| json!(r)));
        put(ENDPOINT, self.endpoint.as_ref().map(|e| json!(e)));
        put(WAIT_TIME_SECS, Some(json!(self.wait_time_secs)));
        put(
            VISIBILITY_TIMEOUT_SECS,
            Some(json!(self.visibility_timeout_secs)),
        );
        put(MAX_MESSAGES, Some(json!(self.max_messages)));
        put(PROVISION, Some(json!(self.provision)));
        put(EVENT_BUS, Some(json!(self.event_bus)));
        put(RULE_NAME, self.rule_name.as_ref().map(|r| json!(r)));
        put(EVENT_PATTERN, self.event_pattern.clone());
        m
    }

    /// The connection settings with the (resolved) credential.
    pub fn connection(&self, credential: Option<AwsCredential>) -> Connection {
        Connection {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            credential,
            timeout: Some(Duration::from_secs(self.wait_time_secs as u64 + 10)),
            max_attempts: 1,
            egress: None,
        }
    }
}

/// [`crate::SourceKind::normalize`] of `aws_sqs`.
pub(crate) fn normalize(
    settings: &Map<String, Value>,
    envelope: &[&str],
) -> Result<Map<String, Value>, ConfigError> {
    Ok(SqsSourceConfig::parse(settings, Naming::Api, envelope)?.to_map(Naming::Api))
}

/// [`crate::SourceKind::build`] of `aws_sqs`: the stored settings, the
/// credential resolved from the node's `aws.credentials`.
pub(crate) fn build(
    name: &str,
    bus: &str,
    settings: &Map<String, Value>,
    ctx: &SourceContext,
    status: StatusCell,
) -> Result<SourceFuture, ConfigError> {
    let config = SqsSourceConfig::read(&Fields::new(settings, Naming::Api, &[], FIELDS)?)?;
    let credential = aws_common::resolve_credential(
        &ctx.aws_credentials,
        config.credential.as_deref(),
        ctx.aws_chain_fallback,
    )
    .map_err(|e| ConfigError::new(CREDENTIAL.api, format!("{} (at {})", e.message, ctx.node)))?;
    if let Some(c) = &credential {
        c.check_use(
            config
                .credential
                .as_deref()
                .unwrap_or(aws_common::DEFAULT_CREDENTIAL),
            config.endpoint.as_deref(),
            config.region.as_deref(),
        )?;
    }
    Ok(Box::pin(run(
        name.to_string(),
        bus.to_string(),
        config,
        credential,
        ctx.ingest.clone(),
        status,
    )))
}

/// Poll the queue of `config` into `bus` until the future is dropped:
/// receive, convert, hand to `ingest`, then delete what was committed.
/// Progress and the last error go to `status`; `name` names the source in
/// logs and metrics (and the default rule name when provisioning).
pub async fn run(
    name: String,
    bus: String,
    config: SqsSourceConfig,
    credential: Option<AwsCredential>,
    ingest: Arc<dyn Ingest>,
    status: StatusCell,
) {
    let conn = config.connection(credential);
    let mut queue = Queue::connect(&conn, &config.queue_url).await;
    let mut backoff = Duration::from_millis(200);
    let grow = |b: Duration| (b * 2).min(Duration::from_secs(30));
    if config.provision {
        let p = Provision {
            event_bus: config.event_bus.clone(),
            rule_name: config
                .rule_name
                .clone()
                .unwrap_or_else(|| format!("strait-{name}")),
            event_pattern: config
                .event_pattern
                .clone()
                .unwrap_or_else(|| json!({"source": [{"prefix": ""}]})),
        };
        loop {
            match queue.provision(&p).await {
                Ok(()) => {
                    tracing::info!(source = %name, queue = queue.queue_url(), rule = %p.rule_name, "provisioned SQS queue and EventBridge rule");
                    break;
                }
                Err(e) => {
                    status.update(|s| s.last_error = Some(format!("provisioning failed: {e}")));
                    tracing::warn!(source = %name, error = %e, "provisioning failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = grow(backoff);
                }
            }
        }
        backoff = Duration::from_millis(200);
    }
    let delete_delay = std::env::var(DELETE_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let queue_url = queue.queue_url().to_string();
    tracing::info!(source = %name, queue = %queue_url, bus = %bus, "SQS source started");
    loop {
        let msgs = match queue
            .receive(
                config.max_messages,
                config.wait_time_secs,
                config.visibility_timeout_secs,
            )
            .await
        {
            Ok(m) => {
                backoff = Duration::from_millis(200);
                status.update(|s| {
                    s.last_error = None;
                    s.received += m.len() as u64;
                });
                m
            }
            Err(e) => {
                status.update(|s| s.last_error = Some(format!("SQS receive failed: {e}")));
                metrics::counter!("strait_aws_source_errors_total", "source" => name.clone())
                    .increment(1);
                tracing::warn!(source = %name, error = %e, "SQS receive failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = grow(backoff);
                continue;
            }
        };
        if msgs.is_empty() {
            continue;
        }
        metrics::counter!("strait_aws_source_received_total", "source" => name.clone())
            .increment(msgs.len() as u64);
        let reject = |what: &str, id: &str, e: &dyn std::fmt::Display| {
            status.update(|s| s.rejected += 1);
            metrics::counter!("strait_aws_source_rejected_total", "source" => name.clone())
                .increment(1);
            tracing::warn!(source = %name, message_id = %id, error = %e, "{what}");
        };
        // One offer per message, in order; the receipt of each converted one.
        let mut offers = Vec::with_capacity(msgs.len());
        let mut receipts = Vec::with_capacity(msgs.len());
        for m in &msgs {
            match mapping::sqs_body_to_cloudevent(
                &m.body,
                &m.message_id,
                &queue_url,
                m.trace_header.as_deref(),
            ) {
                Ok(event) => {
                    offers.push(Offer::Event {
                        bus: bus.clone(),
                        event,
                    });
                    receipts.push(Some(m.receipt_handle.clone()));
                }
                Err(e) => {
                    reject(
                        "SQS message is not a valid event; left on the queue (use a redrive policy)",
                        &m.message_id,
                        &e,
                    );
                    offers.push(Offer::Refused { bus: bus.clone() });
                    receipts.push(None);
                }
            }
        }
        let pending: Vec<String> = receipts.iter().flatten().cloned().collect();
        // While the commit runs, keep the messages invisible (extend at half
        // the visibility timeout), so a slow commit is not re-delivered.
        let commit = ingest.submit(offers);
        tokio::pin!(commit);
        let half = Duration::from_millis((config.visibility_timeout_secs as u64 * 500).max(500));
        let mut extend = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
        let committed = loop {
            tokio::select! {
                r = &mut commit => break r,
                _ = extend.tick() => {
                    if let Err(e) = queue.extend_visibility(&pending, config.visibility_timeout_secs).await {
                        tracing::warn!(source = %name, error = %e, "extending the visibility timeout failed");
                    }
                }
            }
        };
        let outcomes = match committed {
            Ok(o) => o,
            Err(e) => {
                status.update(|s| s.last_error = Some(format!("commit failed: {e}")));
                tracing::warn!(source = %name, error = %e, "commit failed; the messages become visible again after the visibility timeout");
                tokio::time::sleep(backoff).await;
                backoff = grow(backoff);
                continue;
            }
        };
        let mut delete = Vec::new();
        for ((receipt, outcome), m) in receipts.into_iter().zip(outcomes).zip(&msgs) {
            let Some(receipt) = receipt else { continue };
            match outcome {
                IngestOutcome::Accepted => {
                    status.update(|s| s.committed += 1);
                    delete.push(receipt);
                }
                IngestOutcome::Duplicate => delete.push(receipt),
                IngestOutcome::Invalid(e) => reject(
                    "event from SQS is not a valid CloudEvent; left on the queue",
                    &m.message_id,
                    &e,
                ),
                IngestOutcome::NoSuchBus | IngestOutcome::Refused => {
                    status.update(|s| {
                        s.last_error = Some(format!(
                            "bus `{bus}` does not exist at this site; messages left on the queue"
                        ))
                    });
                    tracing::warn!(source = %name, bus = %bus, "the source's bus does not exist; messages left on the queue");
                }
            }
        }
        if let Some(d) = delete_delay {
            // Fault injection (tests): delete later, off the polling loop.
            let queue = queue.clone();
            let name = name.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                delete_committed(&queue, &name, &delete).await;
            });
        } else {
            delete_committed(&queue, &name, &delete).await;
        }
    }
}

/// Delete messages whose events are committed.
async fn delete_committed(queue: &Queue, name: &str, receipts: &[String]) {
    match queue.delete(receipts).await {
        Ok(n) => {
            metrics::counter!("strait_aws_source_deleted_total", "source" => name.to_string())
                .increment(n as u64);
        }
        Err(e) => {
            tracing::warn!(source = %name, error = %e, "SQS delete failed; the messages come back and are dropped as duplicates");
        }
    }
}

/// A received message.
#[derive(Debug, Clone, PartialEq)]
struct Received {
    /// SQS message id.
    message_id: String,
    /// Receipt handle (for delete).
    receipt_handle: String,
    /// Body.
    body: String,
    /// The `AWSTraceHeader` system attribute, if any.
    trace_header: Option<String>,
}

/// What to create when provisioning.
#[derive(Debug, Clone, PartialEq)]
struct Provision {
    /// EventBridge bus the rule is on.
    event_bus: String,
    /// Rule name.
    rule_name: String,
    /// Event pattern of the rule.
    event_pattern: Value,
}

/// An SQS queue being polled.
#[derive(Debug, Clone)]
struct Queue {
    sqs: aws_sdk_sqs::Client,
    config: aws_config::SdkConfig,
    queue_url: String,
}

impl Queue {
    /// Build the clients.
    async fn connect(conn: &Connection, queue_url: &str) -> Queue {
        let config = aws_common::sdk_config(conn).await;
        Queue {
            sqs: aws_sdk_sqs::Client::new(&config),
            config,
            queue_url: queue_url.to_string(),
        }
    }

    /// The queue URL polled.
    fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Long-poll: up to `max` messages, waiting up to `wait_secs`; received
    /// messages stay invisible for `visibility_secs` (then SQS hands them
    /// out again: a crash before delete re-delivers instead of losing).
    async fn receive(
        &self,
        max: i32,
        wait_secs: i32,
        visibility_secs: i32,
    ) -> Result<Vec<Received>, DeliveryError> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max)
            .wait_time_seconds(wait_secs)
            .visibility_timeout(visibility_secs)
            .message_system_attribute_names(MessageSystemAttributeName::AwsTraceHeader)
            .send()
            .await
            .map_err(|e| aws_common::classify_sdk_error("SQS ReceiveMessage", &e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                Some(Received {
                    message_id: m.message_id()?.to_string(),
                    receipt_handle: m.receipt_handle()?.to_string(),
                    body: m.body().unwrap_or("").to_string(),
                    trace_header: m
                        .attributes()
                        .and_then(|a| a.get(&MessageSystemAttributeName::AwsTraceHeader))
                        .cloned(),
                })
            })
            .collect())
    }

    /// Delete messages by receipt handle (batches of 10). Returns how many
    /// SQS reported deleted.
    async fn delete(&self, receipts: &[String]) -> Result<usize, DeliveryError> {
        let mut deleted = 0;
        for chunk in receipts.chunks(10) {
            let entries: Vec<DeleteMessageBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .ok()
                })
                .collect();
            let out = self
                .sqs
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| aws_common::classify_sdk_error("SQS DeleteMessageBatch", &e))?;
            deleted += out.successful().len();
            for f in out.failed() {
                tracing::warn!(
                    code = f.code(),
                    message = f.message().unwrap_or(""),
                    "SQS did not delete a message"
                );
            }
        }
        Ok(deleted)
    }

    /// Keep messages invisible for another `visibility_secs` (called while a
    /// commit takes long, so SQS does not hand them out again meanwhile).
    async fn extend_visibility(
        &self,
        receipts: &[String],
        visibility_secs: i32,
    ) -> Result<(), DeliveryError> {
        for chunk in receipts.chunks(10) {
            let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .visibility_timeout(visibility_secs)
                        .build()
                        .ok()
                })
                .collect();
            self.sqs
                .change_message_visibility_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    aws_common::classify_sdk_error("SQS ChangeMessageVisibilityBatch", &e)
                })?;
        }
        Ok(())
    }

    /// Create the queue (named by the last segment of the queue URL) if
    /// missing, an EventBridge rule on `p.event_bus` with `p.event_pattern`
    /// targeting it, and the queue policy that lets that rule send. All
    /// calls are idempotent. Switches to the queue URL SQS returns.
    async fn provision(&mut self, p: &Provision) -> Result<(), DeliveryError> {
        let name = self
            .queue_url
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let mut create = self.sqs.create_queue().queue_name(&name);
        if name.ends_with(".fifo") {
            create = create.attributes(QueueAttributeName::FifoQueue, "true");
        }
        let created = create
            .send()
            .await
            .map_err(|e| aws_common::classify_sdk_error("SQS CreateQueue", &e))?;
        if let Some(u) = created.queue_url() {
            self.queue_url = u.to_string();
        }
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| aws_common::classify_sdk_error("SQS GetQueueAttributes", &e))?;
        let queue_arn = attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| DeliveryError::Retryable("SQS returned no QueueArn".into()))?;
        let eb = aws_sdk_eventbridge::Client::new(&self.config);
        let rule = eb
            .put_rule()
            .name(&p.rule_name)
            .event_bus_name(&p.event_bus)
            .event_pattern(p.event_pattern.to_string())
            .state(aws_sdk_eventbridge::types::RuleState::Enabled)
            .description("created by Strait (aws.sources provision)")
            .send()
            .await
            .map_err(|e| aws_common::classify_sdk_error("EventBridge PutRule", &e))?;
        let rule_arn = rule.rule_arn().unwrap_or("").to_string();
        let policy = json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "strait-eventbridge-to-sqs",
                "Effect": "Allow",
                "Principal": {"Service": "events.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
            }]
        });
        self.sqs
            .set_queue_attributes()
            .queue_url(&self.queue_url)
            .attributes(QueueAttributeName::Policy, policy.to_string())
            .send()
            .await
            .map_err(|e| aws_common::classify_sdk_error("SQS SetQueueAttributes", &e))?;
        let target = aws_sdk_eventbridge::types::Target::builder()
            .id("strait-sqs-source")
            .arn(&queue_arn)
            .build()
            .map_err(|e| DeliveryError::Permanent(format!("EventBridge target: {e}")))?;
        let out = eb
            .put_targets()
            .rule(&p.rule_name)
            .event_bus_name(&p.event_bus)
            .targets(target)
            .send()
            .await
            .map_err(|e| aws_common::classify_sdk_error("EventBridge PutTargets", &e))?;
        if out.failed_entry_count() > 0 {
            return Err(DeliveryError::Permanent(format!(
                "EventBridge PutTargets failed: {:?}",
                out.failed_entries()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn one_type_in_both_spellings() {
        let api = map(json!({"queueUrl": "http://h/1/q", "credential": "main",
            "waitTimeSecs": 5, "provision": true, "eventPattern": {"source": ["a"]}}));
        let c = SqsSourceConfig::parse(&api, Naming::Api, &[]).expect("valid");
        assert_eq!(
            (c.wait_time_secs, c.visibility_timeout_secs, c.max_messages),
            (5, 30, 10)
        );
        assert_eq!(c.event_bus, "default");
        let config = c.to_map(Naming::NodeConfig);
        assert_eq!(config["queue_url"], "http://h/1/q");
        assert_eq!(config["wait_time_secs"], 5);
        assert!(!config.contains_key("region"));
        assert_eq!(
            SqsSourceConfig::parse(&config, Naming::NodeConfig, &[]).expect("valid"),
            c
        );
        assert_eq!(
            SqsSourceConfig::parse(&c.to_map(Naming::Api), Naming::Api, &[]).expect("valid"),
            c
        );
        // Each spelling is its own: the other one is an unknown field.
        let e = SqsSourceConfig::parse(&config, Naming::Api, &[]).expect_err("snake_case");
        assert!(e.message.starts_with("unknown field"), "{e}");
        // Errors name the field as the definition spells it.
        let mut bad = c.clone();
        bad.max_messages = 11;
        assert_eq!(
            bad.validate(Naming::NodeConfig).expect_err("11").field,
            "max_messages"
        );
        assert_eq!(
            bad.validate(Naming::Api).expect_err("11").field,
            "maxMessages"
        );
        let mut bad = config.clone();
        bad.insert("visibility_timeout_secs".into(), json!("x"));
        let e = SqsSourceConfig::parse(&bad, Naming::NodeConfig, &[]).expect_err("string");
        assert_eq!(e.field, "visibility_timeout_secs");
        // `credentials` is another name for `credential` in the node's configuration only.
        let mut alias = config.clone();
        alias.remove("credential");
        alias.insert("credentials".into(), json!("main"));
        let read = SqsSourceConfig::parse(&alias, Naming::NodeConfig, &[]).expect("alias");
        assert_eq!(read.credential.as_deref(), Some("main"));
        let mut alias = api.clone();
        alias.remove("credential");
        alias.insert("credentials".into(), json!("main"));
        assert!(SqsSourceConfig::parse(&alias, Naming::Api, &[]).is_err());
    }
}
