//! ServiceAccount tokens: the JWTs Kubernetes' TokenRequest API issues (ES256, signed with the
//! cluster's `service-account.key`), their verification for bearer authentication, the
//! validation of a TokenRequest body, and ServiceAccount admission of pods (the
//! `kube-api-access-*` projected volume). All pure: the clock and the store are the caller's.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The group every ServiceAccount belongs to, and the prefix of its per-namespace group.
pub const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";
/// The prefix of a ServiceAccount's user name.
pub const USER_PREFIX: &str = "system:serviceaccount:";
/// Where the projected token volume is mounted in every container.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap holding the cluster CA in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

/// Kubernetes' default and minimum token lifetimes.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The lifetime the admission-added projected token asks for (Kubernetes' 1h + 7s marker).
pub const PROJECTED_EXPIRATION_SECONDS: i64 = 3607;

/// Why a token was refused or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the signing key is not a valid ECDSA P-256 key: {0}")]
    BadKey(String),
    #[error("signing failed")]
    Signing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token was issued by someone else")]
    WrongIssuer,
}

/// The object a token is bound to (`kubernetes.io.pod` / `.secret`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

/// The private `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaim {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
}

/// A ServiceAccount token's claims, as Kubernetes writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
    pub nbf: i64,
    pub sub: String,
}

impl Claims {
    /// The user the token authenticates as and its groups.
    pub fn user(&self) -> (String, Vec<String>) {
        (
            self.sub.clone(),
            vec![
                SERVICE_ACCOUNTS_GROUP.to_string(),
                format!("{SERVICE_ACCOUNTS_GROUP}:{}", self.kubernetes.namespace),
                "system:authenticated".to_string(),
            ],
        )
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Signs and verifies ServiceAccount tokens with one key for one issuer.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    kid: String,
    issuer: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// The issuer Kubernetes names by default: the in-cluster API's URL.
pub fn issuer_for(cluster_domain: &str) -> String {
    format!("https://kubernetes.default.svc.{cluster_domain}")
}

impl TokenSigner {
    /// A signer for the PKCS#8 PEM key in `key_pem` issuing as `issuer`.
    pub fn new(key_pem: &str, issuer: &str) -> Result<Self, TokenError> {
        let der = rcgen::KeyPair::from_pem(key_pem)
            .map_err(|e| TokenError::BadKey(e.to_string()))?
            .serialize_der();
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| TokenError::BadKey(e.to_string()))?;
        // Kubernetes' key id: the unpadded base64url SHA-256 of the public key.
        let kid = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            key.public_key().as_ref(),
        ));
        Ok(TokenSigner {
            key,
            kid,
            issuer: issuer.to_string(),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs `claims` into a compact JWS.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let body = serde_json::to_vec(claims).map_err(|_| TokenError::Signing)?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(body)
        );
        let signature = self
            .key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| TokenError::Signing)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// Checks `token`'s signature, issuer, validity window at `now` (unix seconds) and that
    /// its audience names this issuer; returns its claims. Whether a bound object still
    /// exists is the caller's to check.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(body), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed);
        let header: Header =
            serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
        if header.alg != "ES256" {
            return Err(TokenError::BadSignature);
        }
        let signing_input = &token[..token.len() - sig.len() - 1];
        UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        )
        .verify(signing_input.as_bytes(), &decode(sig)?)
        .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims =
            serde_json::from_slice(&decode(body)?).map_err(|_| TokenError::Malformed)?;
        if claims.iss != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        // Kubernetes allows a minute of clock skew either way.
        const LEEWAY: i64 = 60;
        if now > claims.exp + LEEWAY {
            return Err(TokenError::Expired);
        }
        if now + LEEWAY < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        if !claims.aud.iter().any(|a| a == &self.issuer) {
            return Err(TokenError::WrongAudience);
        }
        Ok(claims)
    }
}

/// A validated TokenRequest `spec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
    pub bound: Option<BoundRef>,
}

/// `spec.boundObjectRef`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundRef {
    pub kind: BoundKind,
    pub name: String,
    pub uid: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundKind {
    Pod,
    Secret,
}

impl BoundKind {
    pub fn plural(self) -> &'static str {
        match self {
            BoundKind::Pod => "pods",
            BoundKind::Secret => "secrets",
        }
    }
}

/// Validates a TokenRequest body, applying Kubernetes' defaults; the error is the
/// `field: message` Kubernetes reports in a 422.
pub fn parse_token_request(body: &Value) -> Result<TokenSpec, String> {
    let spec = body.get("spec").cloned().unwrap_or(Value::Null);
    let audiences = match spec.get("audiences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|a| {
                a.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| "spec.audiences: Invalid value: must be strings".to_string())
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("spec.audiences: Invalid value: must be a list".into()),
    };
    let expiration_seconds = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
        Some(v) => v.as_i64().ok_or_else(|| {
            "spec.expirationSeconds: Invalid value: must be an integer".to_string()
        })?,
    };
    if expiration_seconds < MIN_EXPIRATION_SECONDS {
        return Err(format!(
            "spec.expirationSeconds: Invalid value: {expiration_seconds}: may not specify a duration less than 10 minutes"
        ));
    }
    if expiration_seconds > 1 << 32 {
        return Err(format!(
            "spec.expirationSeconds: Invalid value: {expiration_seconds}: may not specify a duration larger than 2^32 seconds"
        ));
    }
    let bound = match spec.get("boundObjectRef") {
        None | Some(Value::Null) => None,
        Some(r) => {
            let kind = match r.get("kind").and_then(Value::as_str) {
                Some("Pod") => BoundKind::Pod,
                Some("Secret") => BoundKind::Secret,
                other => {
                    return Err(format!(
                        "spec.boundObjectRef.kind: Unsupported value: \"{}\": supported values: \"Pod\", \"Secret\"",
                        other.unwrap_or_default()
                    ))
                }
            };
            if let Some(v) = r.get("apiVersion").and_then(Value::as_str) {
                if v != "v1" {
                    return Err(format!(
                        "spec.boundObjectRef.apiVersion: Invalid value: \"{v}\": must be v1"
                    ));
                }
            }
            let name = r
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| "spec.boundObjectRef.name: Required value".to_string())?;
            BoundRef {
                kind,
                name: name.to_string(),
                uid: r
                    .get("uid")
                    .and_then(Value::as_str)
                    .filter(|u| !u.is_empty())
                    .map(str::to_string),
            }
            .into()
        }
    };
    Ok(TokenSpec {
        audiences,
        expiration_seconds,
        bound,
    })
}

/// What a token for a ServiceAccount is issued from.
#[derive(Debug, Clone)]
pub struct Grant<'a> {
    pub namespace: &'a str,
    pub service_account: Ref,
    /// The bound object and its uid as stored.
    pub bound: Option<(BoundKind, Ref)>,
    pub now: i64,
}

/// The claims a TokenRequest yields (no audience means the issuer's own).
pub fn claims_for(spec: &TokenSpec, grant: Grant<'_>, issuer: &str, jti: String) -> Claims {
    let aud = if spec.audiences.is_empty() {
        vec![issuer.to_string()]
    } else {
        spec.audiences.clone()
    };
    let (pod, secret) = match grant.bound {
        Some((BoundKind::Pod, r)) => (Some(r), None),
        Some((BoundKind::Secret, r)) => (None, Some(r)),
        None => (None, None),
    };
    Claims {
        aud,
        exp: grant.now + spec.expiration_seconds,
        iat: grant.now,
        iss: issuer.to_string(),
        jti,
        kubernetes: KubernetesClaim {
            namespace: grant.namespace.to_string(),
            serviceaccount: grant.service_account.clone(),
            pod,
            secret,
        },
        nbf: grant.now,
        sub: format!(
            "{USER_PREFIX}{}:{}",
            grant.namespace, grant.service_account.name
        ),
    }
}

/// The TokenRequest answered: the request's spec with defaults and the status.
pub fn token_response(
    namespace: &str,
    name: &str,
    request: &Value,
    claims: &Claims,
    token: &str,
    expiration_timestamp: &str,
) -> Value {
    let mut spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
    spec["audiences"] = json!(claims.aud);
    spec["expirationSeconds"] = json!(claims.exp - claims.iat);
    if spec.get("boundObjectRef").is_none() {
        spec["boundObjectRef"] = Value::Null;
    }
    json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": expiration_timestamp},
    })
}

/// ServiceAccount admission of a new pod: names the ServiceAccount ("default" unless set) and,
/// unless the pod or its ServiceAccount (`service_account`, if it exists) opts out, adds the
/// `kube-api-access-<suffix>` projected volume mounted in every container and init container,
/// in the shape Kubernetes gives it. Mirror pods are left alone, as Kubernetes does.
pub fn admit_pod(pod: &mut Value, service_account: Option<&Value>, suffix: &str) {
    let mirror = pod
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if mirror {
        return;
    }
    let name = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .or_else(|| {
            spec.get("serviceAccount")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
        })
        .unwrap_or("default")
        .to_string();
    spec.insert("serviceAccountName".into(), json!(name));
    let opted_out = match spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
    {
        Some(pod_says) => !pod_says,
        None => {
            service_account
                .and_then(|sa| sa.get("automountServiceAccountToken"))
                .and_then(Value::as_bool)
                == Some(false)
        }
    };
    if opted_out {
        return;
    }
    let mounted_already = ["containers", "initContainers"].iter().any(|field| {
        spec.get(*field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| {
                c.get("volumeMounts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT_PATH))
            })
    });
    if mounted_already {
        return;
    }
    let volume_name = format!("kube-api-access-{suffix}");
    let volume = json!({
        "name": volume_name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": PROJECTED_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}, "path": "namespace"}]}},
            ],
        },
    });
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    if !volumes.is_array() {
        *volumes = json!([]);
    }
    if let Some(volumes) = volumes.as_array_mut() {
        volumes.push(volume);
    }
    let mount = json!({"name": volume_name, "readOnly": true, "mountPath": MOUNT_PATH});
    for field in ["containers", "initContainers"] {
        let Some(containers) = spec.get_mut(field).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in containers.iter_mut().filter_map(Value::as_object_mut) {
            let mounts = container.entry("volumeMounts").or_insert_with(|| json!([]));
            if let Some(mounts) = mounts.as_array_mut() {
                mounts.push(mount.clone());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn signer(issuer: &str) -> TokenSigner {
        let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        TokenSigner::new(&pem, issuer).unwrap()
    }

    const ISS: &str = "https://kubernetes.default.svc.cluster.local";

    fn claims(aud: &[&str], now: i64) -> Claims {
        let spec = TokenSpec {
            audiences: aud.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: 3600,
            bound: None,
        };
        claims_for(
            &spec,
            Grant {
                namespace: "ns",
                service_account: Ref {
                    name: "default".into(),
                    uid: "sa-uid".into(),
                },
                bound: Some((
                    BoundKind::Pod,
                    Ref {
                        name: "p".into(),
                        uid: "pod-uid".into(),
                    },
                )),
                now,
            },
            ISS,
            "jti-1".into(),
        )
    }

    #[test]
    fn signs_and_verifies_kubernetes_claims() {
        let s = signer(ISS);
        let token = s.sign(&claims(&[], 1000)).unwrap();
        let got = s.verify(&token, 1001).unwrap();
        assert_eq!(got.sub, "system:serviceaccount:ns:default");
        assert_eq!(got.aud, vec![ISS.to_string()]);
        assert_eq!(got.exp, 4600);
        assert_eq!(got.kubernetes.pod.as_ref().unwrap().uid, "pod-uid");
        let (user, groups) = got.user();
        assert_eq!(user, "system:serviceaccount:ns:default");
        assert_eq!(
            groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ns",
                "system:authenticated"
            ]
        );
        // The wire form carries the private claim under its real name.
        let body = token.split('.').nth(1).unwrap();
        let raw: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap();
        assert_eq!(raw["kubernetes.io"]["serviceaccount"]["name"], "default");
        assert_eq!(raw["kubernetes.io"]["namespace"], "ns");
    }

    #[test]
    fn refuses_tampered_expired_early_foreign_tokens() {
        let s = signer(ISS);
        let token = s.sign(&claims(&[], 1000)).unwrap();
        // A body naming another user, with the original signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut c = claims(&[], 1000);
        c.sub = "system:serviceaccount:kube-system:admin".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        assert_eq!(
            s.verify(&parts.join("."), 1001),
            Err(TokenError::BadSignature)
        );
        assert_eq!(s.verify(&token, 4600 + 61), Err(TokenError::Expired));
        assert_eq!(s.verify(&token, 1000 - 61), Err(TokenError::NotYetValid));
        assert_eq!(
            signer(ISS).verify(&token, 1001),
            Err(TokenError::BadSignature)
        );
        assert_eq!(s.verify("a.b", 1001), Err(TokenError::Malformed));
        assert_eq!(s.verify("x.y.z", 1001), Err(TokenError::Malformed));
        let other_aud = s.sign(&claims(&["vault"], 1000)).unwrap();
        assert_eq!(s.verify(&other_aud, 1001), Err(TokenError::WrongAudience));
        let other_issuer = signer("https://elsewhere");
        let foreign = other_issuer.sign(&claims(&[], 1000)).unwrap();
        assert_eq!(s.verify(&foreign, 1001), Err(TokenError::BadSignature));
    }

    #[test]
    fn token_request_defaults_and_validation() {
        let spec = parse_token_request(&json!({"spec": {}})).unwrap();
        assert_eq!(spec.expiration_seconds, 3600);
        assert!(spec.audiences.is_empty() && spec.bound.is_none());
        let spec = parse_token_request(
            &json!({"spec": {"audiences": ["a"], "expirationSeconds": 600,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "u"}}}),
        )
        .unwrap();
        assert_eq!(spec.audiences, ["a"]);
        assert_eq!(
            spec.bound,
            Some(BoundRef {
                kind: BoundKind::Pod,
                name: "p".into(),
                uid: Some("u".into())
            })
        );
        let err = parse_token_request(&json!({"spec": {"expirationSeconds": 599}})).unwrap_err();
        assert!(err.contains("less than 10 minutes"), "{err}");
        let err = parse_token_request(
            &json!({"spec": {"boundObjectRef": {"kind": "Node", "name": "n"}}}),
        )
        .unwrap_err();
        assert!(err.starts_with("spec.boundObjectRef.kind"), "{err}");
        let err = parse_token_request(&json!({"spec": {"boundObjectRef": {"kind": "Secret"}}}))
            .unwrap_err();
        assert_eq!(err, "spec.boundObjectRef.name: Required value");
    }

    fn pod() -> Value {
        json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox",
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "initContainers": [{"name": "i", "image": "busybox"}],
            "volumes": [{"name": "data", "emptyDir": {}}]}})
    }

    #[test]
    fn admission_adds_kubernetes_shaped_volume() {
        let mut p = pod();
        admit_pod(&mut p, None, "abcde");
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(
            p["spec"]["volumes"][1],
            json!({"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}, "path": "namespace"}]}}]}})
        );
        let mount = json!({"name": "kube-api-access-abcde", "readOnly": true,
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"});
        assert_eq!(p["spec"]["containers"][0]["volumeMounts"], json!([mount]));
        assert_eq!(p["spec"]["containers"][1]["volumeMounts"][1], mount);
        assert_eq!(
            p["spec"]["initContainers"][0]["volumeMounts"],
            json!([mount])
        );
        // Admitting again (an already-mounted pod) adds nothing.
        let before = p.clone();
        admit_pod(&mut p, None, "zzzzz");
        assert_eq!(p, before);
    }

    #[test]
    fn admission_honours_opt_outs() {
        let mut p = pod();
        p["spec"]["automountServiceAccountToken"] = json!(false);
        p["spec"]["serviceAccountName"] = json!("robot");
        admit_pod(&mut p, None, "abcde");
        assert_eq!(p["spec"]["serviceAccountName"], "robot");
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1);

        let sa = json!({"automountServiceAccountToken": false});
        let mut p = pod();
        admit_pod(&mut p, Some(&sa), "abcde");
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1);
        // The pod's own setting wins over its ServiceAccount's.
        let mut p = pod();
        p["spec"]["automountServiceAccountToken"] = json!(true);
        admit_pod(&mut p, Some(&sa), "abcde");
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 2);

        let mut mirror = pod();
        mirror["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "x"});
        admit_pod(&mut mirror, None, "abcde");
        assert_eq!(mirror, {
            let mut m = pod();
            m["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "x"});
            m
        });
    }
}
