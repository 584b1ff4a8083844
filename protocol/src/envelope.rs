//! The records carried through the streams: game events and payments.
//!
//! Optional text fields are stored as empty strings, which is also how the ClickHouse
//! tables keep them (`String DEFAULT ''`).

use rkyv::{Archive, Deserialize, Serialize};

/// One game analytics event (`analytics:events` / `analytics:custom`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Event {
    /// Event time, milliseconds since the Unix epoch (UTC).
    pub ts_ms: i64,
    /// Tenant; always equal to the game of the request's credential.
    pub game_id: String,
    /// Environment (`prod`, `staging`, ...).
    pub env: String,
    /// Event name.
    pub event: String,
    /// Player id, or empty.
    pub user_id: String,
    /// Session id, or empty.
    pub session_id: String,
    /// Device id, or empty.
    pub device_id: String,
    /// Distribution channel, or empty.
    pub channel: String,
    /// Platform (`ios`, `android`, `web`, ...), or empty.
    pub platform: String,
    /// ISO-3166 alpha-2 country code in upper case, or empty.
    pub country: String,
    /// Client application version, or empty.
    pub app_version: String,
    /// Deduplication key: the client's UUID, or one assigned at ingest.
    pub event_id: [u8; 16],
    /// Free-form properties, as compact JSON object text (`{}` when absent).
    pub props: String,
}

/// Outcome of a payment.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum PaymentStatus {
    /// The payment went through.
    #[default]
    Success,
    /// The payment was refunded.
    Refunded,
    /// The payment failed.
    Failed,
}

impl PaymentStatus {
    /// The wire name (`success`, `refunded`, `failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Success => "success",
            PaymentStatus::Refunded => "refunded",
            PaymentStatus::Failed => "failed",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "success" => Some(PaymentStatus::Success),
            "refunded" => Some(PaymentStatus::Refunded),
            "failed" => Some(PaymentStatus::Failed),
            _ => None,
        }
    }
}

/// One payment (`analytics:payments`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Payment {
    /// Payment time, milliseconds since the Unix epoch (UTC).
    pub ts_ms: i64,
    /// Tenant; always equal to the game of the request's credential.
    pub game_id: String,
    /// Environment.
    pub env: String,
    /// Paying player.
    pub user_id: String,
    /// Deduplication key.
    pub order_id: String,
    /// Amount in the currency's minor unit; always > 0.
    pub amount_cents: u64,
    /// ISO-4217 code, three upper-case letters.
    pub currency: String,
    /// Outcome.
    pub status: PaymentStatus,
    /// Distribution channel, or empty.
    pub channel: String,
    /// Platform, or empty.
    pub platform: String,
    /// ISO-3166 alpha-2 country code in upper case, or empty.
    pub country: String,
    /// Region, or empty.
    pub region: String,
    /// City, or empty.
    pub city: String,
    /// Product bought, or empty.
    pub product_id: String,
    /// Failure or refund reason, or empty.
    pub reason: String,
}
