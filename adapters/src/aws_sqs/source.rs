//! The client side of the SQS source: long-poll a queue, delete what was
//! committed, and optionally provision the queue, its policy and an
//! EventBridge rule that targets it. The node (node/src/sources/sqs.rs) converts
//! and commits in between.

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName,
};
use serde_json::{Value, json};

use crate::DeliveryError;
use crate::aws_common::{self, Connection};

/// A received message.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// SQS message id.
    pub message_id: String,
    /// Receipt handle (for delete).
    pub receipt_handle: String,
    /// Body.
    pub body: String,
    /// The `AWSTraceHeader` system attribute, if any.
    pub trace_header: Option<String>,
}

/// What to create when provisioning.
#[derive(Debug, Clone, PartialEq)]
pub struct Provision {
    /// EventBridge bus the rule is on.
    pub event_bus: String,
    /// Rule name.
    pub rule_name: String,
    /// Event pattern of the rule.
    pub event_pattern: Value,
}

/// An SQS queue being polled.
#[derive(Debug, Clone)]
pub struct SqsSource {
    sqs: aws_sdk_sqs::Client,
    config: aws_config::SdkConfig,
    queue_url: String,
}

impl SqsSource {
    /// Build the clients.
    pub async fn connect(conn: &Connection, queue_url: &str) -> SqsSource {
        let config = aws_common::sdk_config(conn).await;
        SqsSource {
            sqs: aws_sdk_sqs::Client::new(&config),
            config,
            queue_url: queue_url.to_string(),
        }
    }

    /// The queue URL polled.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Long-poll: up to `max` messages, waiting up to `wait_secs`; received
    /// messages stay invisible for `visibility_secs` (then SQS hands them
    /// out again: a crash before delete re-delivers instead of losing).
    pub async fn receive(
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
    pub async fn delete(&self, receipts: &[String]) -> Result<usize, DeliveryError> {
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
    pub async fn extend_visibility(
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
    pub async fn provision(&mut self, p: &Provision) -> Result<(), DeliveryError> {
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
