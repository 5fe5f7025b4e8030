//! The decoder against real kubectl 1.33 request bodies (testdata/, captured by
//! scripts/capture-protobuf-fixtures.py), hand-built messages for what kubectl never sends, and
//! hostile input.
//!
//! Each NAME.json is what `kubectl create ... --dry-run=client -o json` printed for the object
//! whose protobuf body is NAME.pb: Go's JSON of the same Go object. Nothing is normalised away;
//! the decoder reproduces it exactly, `creationTimestamp: null` and `status: {}` included.

use super::*;
use serde_json::json;

fn fixture(name: &str, pb: &[u8], expected: &str) {
    let expected: Value = serde_json::from_str(expected).expect("fixture JSON parses");
    let got = decode(pb).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        got,
        expected,
        "{name}: decoded\n{}",
        serde_json::to_string_pretty(&got).unwrap_or_default()
    );
}

macro_rules! fixtures {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $test() {
                fixture(
                    $file,
                    include_bytes!(concat!("testdata/", $file, ".pb")),
                    include_str!(concat!("testdata/", $file, ".json")),
                );
            }
        )*

        const ALL_FIXTURES: &[&[u8]] = &[
            $(include_bytes!(concat!("testdata/", $file, ".pb")),)*
            include_bytes!("testdata/token.pb"),
        ];
    };
}

fixtures! {
    kubectl_create_namespace => "namespace",
    kubectl_create_configmap => "configmap",
    kubectl_create_secret_generic => "secret",
    kubectl_create_secret_docker_registry => "secret-docker-registry",
    kubectl_create_deployment => "deployment",
    kubectl_create_deployment_zero_replicas => "deployment-zero",
    kubectl_create_service_clusterip => "service",
    kubectl_create_service_nodeport => "service-nodeport",
    kubectl_create_job => "job",
    kubectl_create_cronjob => "cronjob",
    kubectl_create_serviceaccount => "serviceaccount",
    kubectl_create_role => "role",
    kubectl_create_clusterrole => "clusterrole",
    kubectl_create_rolebinding => "rolebinding",
    kubectl_create_clusterrolebinding => "clusterrolebinding",
    kubectl_create_quota => "quota",
    kubectl_create_priorityclass => "priorityclass",
    kubectl_create_priorityclass_zero_value => "priorityclass-zero",
    kubectl_create_poddisruptionbudget_percent => "poddisruptionbudget",
    kubectl_create_poddisruptionbudget_int => "poddisruptionbudget-int",
    kubectl_create_ingress => "ingress",
}

#[test]
fn kubectl_create_token() {
    // `kubectl create token` has no --dry-run, so the expected JSON is written out: Go's JSON of
    // the TokenRequest kubectl built (a pointer expirationSeconds, an empty status whose token
    // has no omitempty and whose Time is zero).
    let got = decode(include_bytes!("testdata/token.pb")).expect("decodes");
    assert_eq!(
        got,
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {"creationTimestamp": null},
            "spec": {"audiences": ["https://api.example"], "expirationSeconds": 3600},
            "status": {"token": "", "expirationTimestamp": null},
        })
    );
}

#[test]
fn schema_table_is_well_formed() {
    // Field lookup is a binary search by tag, and inline fields must be messages.
    let mut seen = std::collections::BTreeSet::new();
    let mut stack: Vec<&'static Message> = schema::KINDS.iter().map(|(_, _, m)| *m).collect();
    stack.extend(schema::META_KINDS.iter().map(|(_, m)| *m));
    while let Some(m) = stack.pop() {
        if !seen.insert(m.name) {
            continue;
        }
        assert!(
            m.fields.windows(2).all(|w| w[0].tag < w[1].tag),
            "{}: fields not sorted by tag",
            m.name
        );
        for f in m.fields {
            assert_eq!(
                f.json.is_empty(),
                f.flags & INLINE != 0,
                "{}.{}",
                m.name,
                f.tag
            );
            match f.kind {
                Kind::Msg(child) | Kind::MapMsg(child) => stack.push(child),
                _ => assert_eq!(f.flags & INLINE, 0, "{}.{}", m.name, f.tag),
            }
        }
    }
    assert!(seen.len() > 700, "{} messages reachable", seen.len());
    for (av, kind) in [
        ("v1", "Namespace"),
        ("apps/v1", "Deployment"),
        ("batch/v1", "CronJob"),
        ("autoscaling/v1", "HorizontalPodAutoscaler"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        ("networking.k8s.io/v1", "Ingress"),
        ("policy/v1", "PodDisruptionBudget"),
        ("policy/v1", "Eviction"),
        ("scheduling.k8s.io/v1", "PriorityClass"),
        ("coordination.k8s.io/v1", "Lease"),
        ("discovery.k8s.io/v1", "EndpointSlice"),
        ("events.k8s.io/v1", "Event"),
        ("storage.k8s.io/v1", "StorageClass"),
        ("authentication.k8s.io/v1", "TokenRequest"),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
        ("apiregistration.k8s.io/v1", "APIService"),
        ("v1", "ConfigMapList"),
        ("apps/v1", "DeleteOptions"),
    ] {
        assert!(lookup(av, kind).is_ok(), "{av} {kind}");
    }
}

// ---------------------------------------------------------------- hand-built messages

/// Protobuf encoding helpers for hand-built bodies.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

fn ld(tag: u32, body: &[u8]) -> Vec<u8> {
    let mut out = varint(u64::from(tag) << 3 | 2);
    out.extend(varint(body.len() as u64));
    out.extend_from_slice(body);
    out
}

fn vi(tag: u32, v: u64) -> Vec<u8> {
    let mut out = varint(u64::from(tag) << 3);
    out.extend(varint(v));
    out
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let type_meta = cat(&[ld(1, api_version.as_bytes()), ld(2, kind.as_bytes())]);
    let mut out = MAGIC.to_vec();
    out.extend(cat(&[ld(1, &type_meta), ld(2, raw)]));
    out
}

#[test]
fn pod_status_keeps_kubernetes_json_names() {
    // prost calls these host_ip and pod_i_ps; the JSON names come from the OpenAPI schema.
    let pod_ip = |ip: &str| ld(1, ip.as_bytes());
    let status = cat(&[
        ld(5, b"10.0.0.1"),
        ld(6, b"10.1.0.7"),
        ld(12, &pod_ip("10.1.0.7")),
        ld(12, &pod_ip("fd00::7")),
        ld(7, &cat(&[vi(1, 1_704_164_705)])),
    ]);
    let pod = cat(&[ld(1, &ld(1, b"p")), ld(3, &status)]);
    let got = decode(&envelope("v1", "Pod", &pod)).expect("decodes");
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p"},
            "status": {
                "hostIP": "10.0.0.1",
                "podIP": "10.1.0.7",
                "podIPs": [{"ip": "10.1.0.7"}, {"ip": "fd00::7"}],
                "startTime": "2024-01-02T03:05:05Z",
            },
        })
    );
}

#[test]
fn micro_time_has_six_fractional_digits() {
    // events.k8s.io/v1 Event: eventTime 2 is a MicroTime.
    let event = cat(&[ld(2, &cat(&[vi(1, 1_704_164_705), vi(2, 123_456_789)]))]);
    let got = decode(&envelope("events.k8s.io/v1", "Event", &event)).expect("decodes");
    assert_eq!(got["eventTime"], json!("2024-01-02T03:05:05.123456Z"));
}

#[test]
fn int_or_string_and_quantity() {
    // A Service port's targetPort by name, and a container's resource limits.
    let port = cat(&[
        ld(1, b"http"),
        vi(3, 80),
        ld(4, &cat(&[vi(1, 1), ld(3, b"web")])),
    ]);
    let svc = cat(&[ld(2, &ld(1, &port))]);
    let got = decode(&envelope("v1", "Service", &svc)).expect("decodes");
    assert_eq!(got["spec"]["ports"][0]["targetPort"], json!("web"));
    assert_eq!(got["spec"]["ports"][0]["port"], json!(80));

    let entry = |k: &str, q: &str| ld(1, &cat(&[ld(1, k.as_bytes()), ld(2, &ld(1, q.as_bytes()))]));
    let limits = cat(&[entry("cpu", "500m"), entry("memory", "1Gi")]);
    let container = cat(&[ld(1, b"c"), ld(8, &limits)]);
    let pod = cat(&[ld(2, &ld(2, &container))]);
    let got = decode(&envelope("v1", "Pod", &pod)).expect("decodes");
    assert_eq!(
        got["spec"]["containers"][0]["resources"]["limits"],
        json!({"cpu": "500m", "memory": "1Gi"})
    );
}

#[test]
fn inline_structs_flatten_into_their_parent() {
    // Volume embeds VolumeSource (tag 2); ConfigMapVolumeSource embeds LocalObjectReference.
    let cm = cat(&[ld(1, &ld(1, b"settings")), vi(3, 0o644)]);
    let source = ld(19, &cm);
    let volume = cat(&[ld(1, b"cfg"), ld(2, &source)]);
    let pod = cat(&[ld(2, &ld(1, &volume))]);
    let got = decode(&envelope("v1", "Pod", &pod)).expect("decodes");
    assert_eq!(
        got["spec"]["volumes"],
        json!([{"name": "cfg", "configMap": {"name": "settings", "defaultMode": 420}}])
    );
}

#[test]
fn list_wrappers_are_arrays() {
    // A TokenReview's status.user.extra: map<string, ExtraValue>.
    let extra = ld(
        4,
        &cat(&[ld(1, b"scopes"), ld(2, &cat(&[ld(1, b"a"), ld(1, b"b")]))]),
    );
    let user = cat(&[ld(1, b"alice"), extra]);
    let review = cat(&[ld(3, &cat(&[vi(1, 1), ld(2, &user)]))]);
    let got = decode(&envelope(
        "authentication.k8s.io/v1",
        "TokenReview",
        &review,
    ))
    .expect("ok");
    assert_eq!(
        got["status"],
        json!({"authenticated": true, "user": {"username": "alice", "extra": {"scopes": ["a", "b"]}}})
    );
}

#[test]
fn raw_extension_and_managed_fields_carry_json() {
    // ControllerRevision.data is a RawExtension; metadata.managedFields[].fieldsV1 a FieldsV1.
    let fields_v1 = ld(1, br#"{"f:spec":{}}"#);
    let managed = cat(&[
        ld(1, b"kubectl"),
        ld(2, b"Apply"),
        ld(6, b"FieldsV1"),
        ld(7, &fields_v1),
    ]);
    let meta = cat(&[ld(1, b"rev"), ld(17, &managed)]);
    let rev = cat(&[
        ld(1, &meta),
        ld(2, &ld(1, br#"{"spec":{"replicas":2}}"#)),
        vi(3, 4),
    ]);
    let got = decode(&envelope("apps/v1", "ControllerRevision", &rev)).expect("decodes");
    assert_eq!(got["data"], json!({"spec": {"replicas": 2}}));
    assert_eq!(got["revision"], json!(4));
    assert_eq!(
        got["metadata"]["managedFields"][0]["fieldsV1"],
        json!({"f:spec": {}})
    );
    assert_eq!(
        got["metadata"]["managedFields"][0]["manager"],
        json!("kubectl")
    );
}

#[test]
fn crd_schema_specials() {
    // JSONSchemaProps: type 5, properties 29 (map), additionalProperties 30 (OrBool),
    // items 24 (OrArray), default 8 (JSON), x-kubernetes-preserve-unknown-fields 38.
    let string_schema = ld(5, b"string");
    let props = ld(29, &cat(&[ld(1, b"name"), ld(2, &string_schema)]));
    let schema = cat(&[
        ld(5, b"object"),
        props,
        ld(30, &vi(1, 0)),
        ld(24, &ld(1, &string_schema)),
        ld(8, &ld(1, br#"{"a":1}"#)),
        vi(38, 1),
    ]);
    let version = cat(&[ld(1, b"v1"), vi(2, 1), vi(3, 1), ld(4, &ld(1, &schema))]);
    let names = cat(&[ld(1, b"widgets"), ld(4, b"Widget")]);
    let spec = cat(&[
        ld(1, b"example.com"),
        ld(3, &names),
        ld(4, b"Namespaced"),
        ld(7, &version),
    ]);
    let crd = cat(&[ld(1, &ld(1, b"widgets.example.com")), ld(2, &spec)]);
    let got = decode(&envelope(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        &crd,
    ))
    .expect("decodes");
    assert_eq!(
        got["spec"]["versions"][0],
        json!({
            "name": "v1", "served": true, "storage": true,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "additionalProperties": false,
                "items": {"type": "string"},
                "default": {"a": 1},
                "x-kubernetes-preserve-unknown-fields": true,
            }},
        })
    );
}

#[test]
fn delete_options_in_any_served_group_version() {
    let opts = cat(&[vi(1, 0), ld(4, b"Foreground")]);
    for av in ["v1", "apps/v1", "meta.k8s.io/v1"] {
        let got = decode(&envelope(av, "DeleteOptions", &opts)).expect("decodes");
        assert_eq!(
            got,
            json!({"apiVersion": av, "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                   "propagationPolicy": "Foreground"})
        );
    }
}

#[test]
fn unknown_fields_are_skipped_and_packed_scalars_accepted() {
    // Tag 99 of every wire type is unknown to ConfigMap; ServiceSpec.clusterIPs is repeated.
    let mut cm = ld(1, &ld(1, b"c"));
    cm.extend(vi(99, 7));
    cm.extend(ld(99, b"junk"));
    cm.extend(varint(99 << 3 | 1));
    cm.extend([0u8; 8]);
    cm.extend(varint(99 << 3 | 5));
    cm.extend([0u8; 4]);
    let got = decode(&envelope("v1", "ConfigMap", &cm)).expect("decodes");
    assert_eq!(
        got,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    );

    // Endpoints' EndpointPort has none repeated, but a PodSecurityContext's supplementalGroups
    // (4) is a repeated int64, sent unpacked by Go; packed must decode the same.
    let unpacked = cat(&[vi(4, 1000), vi(4, 2000)]);
    let packed = ld(4, &cat(&[varint(1000), varint(2000)]));
    for sc in [unpacked, packed] {
        let pod = ld(2, &ld(14, &sc));
        let got = decode(&envelope("v1", "Pod", &pod)).expect("decodes");
        assert_eq!(
            got["spec"]["securityContext"]["supplementalGroups"],
            json!([1000, 2000])
        );
    }
}

#[test]
fn go_durations() {
    for (nanos, s) in [
        (0, "0s"),
        (1, "1ns"),
        (1_100, "1.1µs"),
        (2_000_000, "2ms"),
        (1_500_000_000, "1.5s"),
        (90_000_000_000, "1m30s"),
        (3_600_000_000_000, "1h0m0s"),
        (3_723_000_000_001, "1h2m3.000000001s"),
        (-5_000_000_000, "-5s"),
        (i64::MIN, "-2562047h47m16.854775808s"),
    ] {
        assert_eq!(go_duration(nanos), s, "{nanos}");
    }
}

// ---------------------------------------------------------------- hostile input

#[test]
fn envelope_errors() {
    assert_eq!(decode(b""), Err(ProtobufError::MissingMagic));
    assert_eq!(
        decode(b"{\"kind\":\"Pod\"}"),
        Err(ProtobufError::MissingMagic)
    );
    assert_eq!(decode(MAGIC), Err(ProtobufError::MissingTypeMeta));
    assert_eq!(
        decode(&envelope("example.com/v1", "Widget", &[])),
        Err(ProtobufError::UnknownApiVersion("example.com/v1".into()))
    );
    assert_eq!(
        decode(&envelope("apps/v1", "Pod", &[])),
        Err(ProtobufError::UnknownKind {
            api_version: "apps/v1".into(),
            kind: "Pod".into()
        })
    );
    let mut gzip = envelope("v1", "ConfigMap", &[]);
    gzip.extend(ld(3, b"gzip"));
    assert_eq!(
        decode(&gzip),
        Err(ProtobufError::UnsupportedEncoding("gzip".into()))
    );
    let mut json_inside = envelope("v1", "ConfigMap", &[]);
    json_inside.extend(ld(4, b"application/json"));
    assert_eq!(
        decode(&json_inside),
        Err(ProtobufError::UnsupportedContentType(
            "application/json".into()
        ))
    );
}

#[test]
fn every_truncation_of_every_fixture_is_an_error_not_a_panic() {
    for pb in ALL_FIXTURES {
        for n in 0..pb.len() {
            // Some prefixes end on a field boundary of the envelope (the raw object is whole
            // but the typeMeta is cut); those may decode or not, but must not panic.
            let _ = decode(pb.get(..n).unwrap_or_default());
        }
        // Cutting inside the raw object is always caught: its length says more is coming.
        assert_eq!(
            decode(pb.get(..pb.len() - 1).unwrap_or_default()),
            Err(ProtobufError::Truncated)
        );
    }
}

#[test]
fn absurd_lengths() {
    // A raw object claiming 2^63 bytes, and a string field claiming more than is left.
    let mut body = MAGIC.to_vec();
    body.extend(varint(2 << 3 | 2));
    body.extend(varint(1 << 63));
    assert_eq!(decode(&body), Err(ProtobufError::Truncated));
    let mut cm = ld(1, &ld(1, b"c"));
    cm.extend(varint(3 << 3 | 2));
    cm.extend(varint(1_000_000));
    cm.extend(b"short");
    assert_eq!(
        decode(&envelope("v1", "ConfigMap", &cm)),
        Err(ProtobufError::Truncated)
    );
}

#[test]
fn malformed_keys_and_varints() {
    let eleven = [0xffu8; 11];
    let mut body = MAGIC.to_vec();
    body.extend(eleven);
    assert_eq!(decode(&body), Err(ProtobufError::BadVarint));
    // Field number 0, and the deprecated group wire types 3 and 4.
    for key in [2u64, 1 << 3 | 3, 1 << 3 | 4, 1 << 3 | 7] {
        let mut cm = varint(key);
        cm.extend([0u8; 4]);
        let got = decode(&envelope("v1", "ConfigMap", &cm));
        assert!(
            matches!(got, Err(ProtobufError::BadKey(_))),
            "{key}: {got:?}"
        );
    }
    // metadata sent as a varint.
    assert_eq!(
        decode(&envelope("v1", "ConfigMap", &vi(1, 5))),
        Err(ProtobufError::WireType {
            message: "k8s.io.api.core.v1.ConfigMap",
            field: "metadata",
            wire_type: 0
        })
    );
}

#[test]
fn invalid_special_values() {
    // IntOrString type 7, a Time in year 300000, and a RawExtension that is not JSON.
    let pdb = ld(2, &ld(1, &cat(&[vi(1, 7)])));
    assert!(matches!(
        decode(&envelope("policy/v1", "PodDisruptionBudget", &pdb)),
        Err(ProtobufError::InvalidValue { .. })
    ));
    let meta = ld(1, &ld(8, &vi(1, 9_000_000_000_000)));
    assert!(matches!(
        decode(&envelope("v1", "ConfigMap", &meta)),
        Err(ProtobufError::InvalidValue { .. })
    ));
    let rev = ld(2, &ld(1, b"{not json"));
    assert!(matches!(
        decode(&envelope("apps/v1", "ControllerRevision", &rev)),
        Err(ProtobufError::InvalidValue { .. })
    ));
}

#[test]
fn deep_nesting_is_refused() {
    // JSONSchemaProps.not (28) nests a JSONSchemaProps: 200 levels inside a CRD.
    let nest = |levels: usize| {
        let mut schema = ld(5, b"string");
        for _ in 0..levels {
            schema = ld(28, &schema);
        }
        let version = cat(&[ld(1, b"v1"), ld(4, &ld(1, &schema))]);
        envelope(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            &ld(2, &ld(7, &version)),
        )
    };
    assert!(decode(&nest(40)).is_ok());
    assert_eq!(decode(&nest(200)), Err(ProtobufError::TooDeep));

    // RawExtensions that embed protobuf envelopes count towards the same limit.
    let mut body = envelope("apps/v1", "ControllerRevision", &[]);
    for _ in 0..100 {
        body = envelope("apps/v1", "ControllerRevision", &ld(2, &ld(1, &body)));
    }
    assert_eq!(decode(&body), Err(ProtobufError::TooDeep));
}

#[test]
fn random_bytes_and_bit_flips_never_panic() {
    // A fixed xorshift, so a failure reproduces.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..5_000 {
        let len = (next() % 200) as usize;
        let raw: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = decode(&envelope("apps/v1", "Deployment", &raw));
    }
    for pb in ALL_FIXTURES {
        for _ in 0..500 {
            let mut mutated = pb.to_vec();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % mutated.len();
                if let Some(b) = mutated.get_mut(i) {
                    *b ^= 1 << (next() % 8);
                }
            }
            let _ = decode(&mutated);
        }
    }
}
