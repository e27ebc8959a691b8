//! Unit tests of environment building.

use super::*;
use k8s_openapi::api::core::v1::{
    ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVarSource, ObjectFieldSelector,
    PodSpec, SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn pod() -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("shop".into()),
            uid: Some("u-1".into()),
            labels: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("node1".into()),
            service_account_name: Some("sa".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn var(name: &str, from: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(from),
        ..Default::default()
    }
}

fn value(name: &str, v: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(v.into()),
        ..Default::default()
    }
}

fn field_ref(path: &str) -> EnvVarSource {
    EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn get<'a>(vars: &'a [(String, String)], name: &str) -> Option<&'a str> {
    vars.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn facts() -> Facts {
    Facts {
        pod_ips: vec!["10.244.1.7".parse().unwrap()],
        host_ips: vec!["192.168.1.10".parse().unwrap()],
        api_service: Some(("10.96.0.1".parse().unwrap(), 443)),
        node_cpus: 2,
        node_memory: 1 << 30,
    }
}

#[test]
fn values_fields_and_expansion() {
    let c = Container {
        name: "c".into(),
        env: Some(vec![
            value("A", "one"),
            value("B", "$(A)-two $$(A) $(MISSING)"),
            var("POD", field_ref("metadata.name")),
            var("NS", field_ref("metadata.namespace")),
            var("UID", field_ref("metadata.uid")),
            var("NODE", field_ref("spec.nodeName")),
            var("IP", field_ref("status.podIP")),
            var("HOST", field_ref("status.hostIP")),
            var("SA", field_ref("spec.serviceAccountName")),
            var("APP", field_ref("metadata.labels['app']")),
        ]),
        ..Default::default()
    };
    let env = container_env(&pod(), &c, &Sources::default(), &facts()).unwrap();
    assert_eq!(get(&env, "B"), Some("one-two $(A) $(MISSING)"));
    assert_eq!(get(&env, "POD"), Some("web"));
    assert_eq!(get(&env, "NS"), Some("shop"));
    assert_eq!(get(&env, "UID"), Some("u-1"));
    assert_eq!(get(&env, "NODE"), Some("node1"));
    assert_eq!(get(&env, "IP"), Some("10.244.1.7"));
    assert_eq!(get(&env, "HOST"), Some("192.168.1.10"));
    assert_eq!(get(&env, "SA"), Some("sa"));
    assert_eq!(get(&env, "APP"), Some("web"));
    assert_eq!(get(&env, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
    assert_eq!(get(&env, "KUBERNETES_SERVICE_PORT"), Some("443"));
    assert_eq!(
        get(&env, "KUBERNETES_PORT_443_TCP"),
        Some("tcp://10.96.0.1:443")
    );
}

#[test]
fn config_maps_and_secrets_with_optional_references() {
    let c = Container {
        name: "c".into(),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: "settings".into(),
                ..Default::default()
            }),
            prefix: Some("CFG_".into()),
            ..Default::default()
        }]),
        env: Some(vec![
            var(
                "COLOR",
                EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: "settings".into(),
                        key: "color".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
            var(
                "PASSWORD",
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "creds".into(),
                        key: "password".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
            var(
                "OPTIONAL",
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "absent".into(),
                        key: "k".into(),
                        optional: Some(true),
                    }),
                    ..Default::default()
                },
            ),
        ]),
        ..Default::default()
    };
    assert_eq!(
        references(&c),
        (
            vec!["settings".to_string()],
            vec!["absent".to_string(), "creds".to_string()]
        )
    );
    let mut sources = Sources::default();
    sources.config_maps.insert(
        "settings".into(),
        Some([("color".to_string(), "blue".to_string())].into()),
    );
    sources.secrets.insert("absent".into(), None);
    let err = container_env(&pod(), &c, &sources, &facts()).unwrap_err();
    assert!(
        err.contains("secret \"creds\" not found in namespace shop"),
        "{err}"
    );
    sources.secrets.insert(
        "creds".into(),
        Some([("password".to_string(), "s3cret".to_string())].into()),
    );
    let env = container_env(&pod(), &c, &sources, &facts()).unwrap();
    assert_eq!(get(&env, "CFG_color"), Some("blue"));
    assert_eq!(get(&env, "COLOR"), Some("blue"));
    assert_eq!(get(&env, "PASSWORD"), Some("s3cret"));
    assert_eq!(get(&env, "OPTIONAL"), None);
}

#[test]
fn quantities() {
    assert_eq!(quantity("500m"), Some(0.5));
    assert_eq!(quantity("1Gi"), Some(1073741824.0));
    assert_eq!(quantity("2"), Some(2.0));
    assert_eq!(quantity("1Qi"), None);
}
