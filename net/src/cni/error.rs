//! The plugin's errors, their CNI error codes and the error document printed on stdout.

use serde::Serialize;

use super::ipam::IpamError;

/// CNI's well-known error codes (spec: "Error"), and this plugin's own from 100 up.
pub mod code {
    /// The configuration's `cniVersion` is not one this plugin speaks.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A required `CNI_*` environment variable is missing or invalid.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// Reading or writing local state failed.
    pub const IO_FAILURE: u32 = 5;
    /// The configuration on stdin is not the JSON expected.
    pub const DECODE_FAILURE: u32 = 6;
    /// The configuration decoded but a value is invalid.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// A netlink request failed.
    pub const NETLINK: u32 = 100;
    /// Every address of the subnet is in use.
    pub const ADDRESSES_EXHAUSTED: u32 = 101;
    /// CHECK found the container's network not as ADD left it.
    pub const CHECK_FAILED: u32 = 102;
    /// The container's network namespace could not be entered.
    pub const NETNS: u32 = 103;
}

/// Why a CNI command failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI version {0:?} is not supported (supported: {supported})", supported = super::config::SUPPORTED_VERSIONS.join(", "))]
    IncompatibleVersion(String),
    #[error("invalid environment: {0}")]
    InvalidEnvironment(String),
    #[error("cannot decode the network configuration: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("network namespace {path}: {source}")]
    Netns {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("check failed: {0}")]
    Check(String),
}

impl CniError {
    /// The CNI error code this error is reported with.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion(_) => code::INCOMPATIBLE_VERSION,
            CniError::InvalidEnvironment(_) => code::INVALID_ENVIRONMENT,
            CniError::Decode(_) => code::DECODE_FAILURE,
            CniError::InvalidConfig(_) => code::INVALID_NETWORK_CONFIG,
            CniError::Io { .. } => code::IO_FAILURE,
            CniError::Ipam(IpamError::Exhausted { .. }) => code::ADDRESSES_EXHAUSTED,
            CniError::Ipam(IpamError::Io { .. }) => code::IO_FAILURE,
            CniError::Netlink { .. } => code::NETLINK,
            CniError::Netns { .. } => code::NETNS,
            CniError::Check(_) => code::CHECK_FAILED,
        }
    }

    /// The CNI error document (`{"cniVersion","code","msg","details"}`) for this error.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Doc<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: String,
            #[serde(skip_serializing_if = "String::is_empty")]
            details: String,
        }
        let mut details = Vec::new();
        let mut source = std::error::Error::source(self);
        while let Some(err) = source {
            details.push(err.to_string());
            source = err.source();
        }
        let doc = Doc {
            cni_version,
            code: self.code(),
            msg: self.to_string(),
            details: details.join(": "),
        };
        serde_json::to_string(&doc).unwrap_or_else(|_| {
            format!(
                r#"{{"cniVersion":"1.0.0","code":{},"msg":"error"}}"#,
                self.code()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_document_has_code_msg_and_details() {
        let err = CniError::Io {
            context: "writing /x".into(),
            source: std::io::Error::other("disk full"),
        };
        let doc: serde_json::Value = serde_json::from_str(&err.to_json("0.4.0")).expect("json");
        assert_eq!(doc["cniVersion"], "0.4.0");
        assert_eq!(doc["code"], 5);
        assert_eq!(doc["msg"], "writing /x: disk full");
        assert_eq!(doc["details"], "disk full");

        let doc: serde_json::Value =
            serde_json::from_str(&CniError::IncompatibleVersion("9.9.9".into()).to_json("1.0.0"))
                .expect("json");
        assert_eq!(doc["code"], 1);
        assert!(doc.get("details").is_none());
        assert!(doc["msg"].as_str().expect("msg").contains("1.0.0"));
    }
}
