//! Security settings: TLS and SASL for the connection to Kafka.
//!
//! Secrets (`sasl_password`, `ssl_key_password`) are held in [`Secret`], whose
//! `Debug` prints `***`, so they never reach logs, error messages or metrics
//! through Sluice; librdkafka receives them and nothing else does.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A value that must not be shown: `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that hands it to librdkafka.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No encryption, no authentication (local and test brokers).
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL authentication without encryption.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// TLS and SASL settings (`[kafka.security]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: SecurityProtocol,
    /// SASL mechanism: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    pub sasl_username: Option<String>,
    /// SASL password (never logged).
    pub sasl_password: Option<Secret>,
    /// CA certificate(s) to verify the brokers with (PEM file); the system's
    /// trust store when absent.
    pub ssl_ca_location: Option<PathBuf>,
    /// Client certificate for mutual TLS (PEM file).
    pub ssl_certificate_location: Option<PathBuf>,
    /// Client private key for mutual TLS (PEM file).
    pub ssl_key_location: Option<PathBuf>,
    /// Password of the client private key (never logged).
    pub ssl_key_password: Option<Secret>,
    /// Check that the broker's certificate names the host connected to. On by
    /// default; turning it off allows man-in-the-middle attacks.
    pub ssl_verify_hostname: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: None,
            ssl_verify_hostname: true,
        }
    }
}

impl SecurityConfig {
    /// Settings that cannot work together, as (field, reason).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let p = self.protocol;
        if !p.uses_sasl()
            && (self.sasl_mechanism.is_some()
                || self.sasl_username.is_some()
                || self.sasl_password.is_some())
        {
            return Some((
                "kafka.security.protocol",
                format!(
                    "SASL settings need `sasl_plaintext` or `sasl_ssl`, not `{}`",
                    p.as_str()
                ),
            ));
        }
        if p.uses_sasl() {
            match self.sasl_mechanism.as_deref() {
                Some("PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") => {}
                Some(other) => {
                    return Some((
                        "kafka.security.sasl_mechanism",
                        format!("`{other}` is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
                    ))
                }
                None => {
                    return Some((
                        "kafka.security.sasl_mechanism",
                        "is required with SASL".into(),
                    ))
                }
            }
            if self.sasl_username.is_none() || self.sasl_password.is_none() {
                return Some((
                    "kafka.security.sasl_username",
                    "SASL needs both sasl_username and sasl_password".into(),
                ));
            }
        }
        let tls_files = self.ssl_ca_location.is_some()
            || self.ssl_certificate_location.is_some()
            || self.ssl_key_location.is_some();
        if !p.uses_tls() && tls_files {
            return Some((
                "kafka.security.protocol",
                format!("TLS files need `ssl` or `sasl_ssl`, not `{}`", p.as_str()),
            ));
        }
        for (field, path) in [
            ("kafka.security.ssl_ca_location", &self.ssl_ca_location),
            (
                "kafka.security.ssl_certificate_location",
                &self.ssl_certificate_location,
            ),
            ("kafka.security.ssl_key_location", &self.ssl_key_location),
        ] {
            if let Some(path) = path.as_ref().filter(|p| !p.exists()) {
                return Some((field, format!("{} does not exist", path.display())));
            }
        }
        None
    }

    /// The librdkafka properties these settings stand for. Secrets included: the
    /// caller hands them to librdkafka and shows them to no one.
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("security.protocol", self.protocol.as_str().to_string())];
        let opt =
            |name: &'static str, value: Option<String>, v: &mut Vec<(&'static str, String)>| {
                if let Some(value) = value {
                    v.push((name, value));
                }
            };
        opt("sasl.mechanism", self.sasl_mechanism.clone(), &mut v);
        opt("sasl.username", self.sasl_username.clone(), &mut v);
        opt(
            "sasl.password",
            self.sasl_password.as_ref().map(|s| s.expose().to_string()),
            &mut v,
        );
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        opt("ssl.ca.location", path(&self.ssl_ca_location), &mut v);
        opt(
            "ssl.certificate.location",
            path(&self.ssl_certificate_location),
            &mut v,
        );
        opt("ssl.key.location", path(&self.ssl_key_location), &mut v);
        opt(
            "ssl.key.password",
            self.ssl_key_password
                .as_ref()
                .map(|s| s.expose().to_string()),
            &mut v,
        );
        if self.protocol.uses_tls() {
            let check = if self.ssl_verify_hostname {
                "https"
            } else {
                "none"
            };
            v.push(("ssl.endpoint.identification.algorithm", check.to_string()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl() -> SecurityConfig {
        SecurityConfig {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some("SCRAM-SHA-512".into()),
            sasl_username: Some("sluice".into()),
            sasl_password: Some(Secret::new("hunter2")),
            ..Default::default()
        }
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let mut c = sasl();
        c.ssl_key_password = Some(Secret::new("keypass"));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("keypass"),
            "{shown}"
        );
        assert!(shown.contains("***"));
    }

    #[test]
    fn properties_carry_the_settings_and_verify_hostnames_by_default() {
        let p = sasl().properties();
        let get = |k: &str| p.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(get("sasl.password"), Some("hunter2"));
        assert_eq!(get("ssl.endpoint.identification.algorithm"), Some("https"));
        let plain = SecurityConfig::default().properties();
        assert_eq!(plain, vec![("security.protocol", "plaintext".to_string())]);
    }

    #[test]
    fn inconsistent_settings_are_named() {
        assert_eq!(sasl().problem(), None);
        let mut c = sasl();
        c.sasl_mechanism = Some("GSSAPI".into());
        assert_eq!(c.problem().unwrap().0, "kafka.security.sasl_mechanism");
        let c = SecurityConfig {
            sasl_username: Some("x".into()),
            ..Default::default()
        };
        assert!(c
            .problem()
            .unwrap()
            .1
            .contains("need `sasl_plaintext` or `sasl_ssl`"));
        let c = SecurityConfig {
            protocol: SecurityProtocol::Ssl,
            ssl_ca_location: Some("/no/such/ca.pem".into()),
            ..Default::default()
        };
        assert!(c.problem().unwrap().1.contains("does not exist"));
    }
}
