//! What the API server stamps on objects it stores: creation times and
//! UIDs. The lab writes the store itself, so it stamps them.

use podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podwire_model::k8s_openapi::jiff::Timestamp;

/// Now, to the second (as Kubernetes stores timestamps).
pub fn now() -> Time {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Time(Timestamp::from_second(secs).unwrap_or_default())
}

/// A random UUID-shaped UID (version bits are not set: nothing reads them).
pub fn random_uid() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
