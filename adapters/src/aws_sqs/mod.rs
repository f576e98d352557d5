//! AWS SQS, whole: the `aws_sqs` target ([`target`]: SendMessageBatch, FIFO
//! aware) and the `aws_sqs` source ([`source`]: its settings, long-poll,
//! conversion, delete after commit, provisioning of queue, policy and
//! EventBridge rule).

pub mod source;
pub mod target;

pub use target::{
    AwsSqsSettings, AwsSqsTarget, BodyMode, MAX_BATCH, MAX_MESSAGE_BYTES, SqsMessage, sqs_id,
    to_message, validate_queue_url,
};
