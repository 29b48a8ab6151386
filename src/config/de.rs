//! How settings are read from TOML and the environment: durations written
//! for humans, lists given as arrays or comma-separated strings, secrets
//! where empty means unset.

use std::fmt;

use serde::{Deserialize, Deserializer};

use super::{AmqpUri, IpRanges, Secret};

/// A list of durations written for humans (`["30s", "5m"]`).
pub(super) mod human_durations {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|text| humantime::parse_duration(text).map_err(serde::de::Error::custom))
            .collect()
    }

    pub(crate) fn serialize<S: Serializer>(
        durations: &[Duration],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let texts: Vec<String> = durations
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        serde::Serialize::serialize(&texts, serializer)
    }
}

/// A duration written for humans (`"7d"`, `"36h"`), as humantime reads it.
pub(super) mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    pub(crate) fn serialize<S: Serializer>(
        duration: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*duration).to_string())
    }
}

/// An optional secret; an empty value (as `HOOKRELAY__SERVER__PATH_TOKEN=`
/// gives it) means "not set".
pub(super) fn optional_secret<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?
        .filter(|s| !s.is_empty())
        .map(Secret::new))
}

/// An optional path; an empty value means "not set".
pub(super) fn optional_path<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<std::path::PathBuf>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?
        .filter(|s| !s.is_empty())
        .map(std::path::PathBuf::from))
}

/// A string setting that may be unset; an empty value means unset (compose
/// passes an unset variable as "").
pub(super) fn optional_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.filter(|s| !s.is_empty()))
}

/// `admin.protected_by`; an empty value means "nothing".
pub(super) fn optional_protection<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<super::Protection>, D::Error> {
    match Option::<String>::deserialize(deserializer)?.as_deref() {
        None | Some("") => Ok(None),
        Some("tls_proxy") => Ok(Some(super::Protection::TlsProxy)),
        Some("host_loopback") => Ok(Some(super::Protection::HostLoopback)),
        Some(other) => Err(serde::de::Error::custom(format!(
            "`{other}` is not a protection: use \"tls_proxy\" or \"host_loopback\""
        ))),
    }
}

/// A list given as a TOML array or as one comma-separated string (as
/// environment variables give it). Entries are trimmed and blank ones dropped,
/// so `HOOKRELAY__INGRESS__CLIENT_IDS=` means "none".
pub(super) fn string_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    struct ListVisitor;

    impl<'de> serde::de::Visitor<'de> for ListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of strings or a comma-separated string")
        }

        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
            Ok(value.split(',').map(str::to_owned).collect())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::new();
            while let Some(entry) = seq.next_element::<String>()? {
                entries.push(entry);
            }
            Ok(entries)
        }
    }

    Ok(deserializer
        .deserialize_any(ListVisitor)?
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

pub(super) fn amqp_uris<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<AmqpUri>, D::Error> {
    string_list(deserializer)?
        .iter()
        .map(|uri| uri.parse().map_err(serde::de::Error::custom))
        .collect()
}

pub(super) fn ip_ranges<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpRanges, D::Error> {
    string_list(deserializer)?
        .join(",")
        .parse()
        .map_err(serde::de::Error::custom)
}
