//! Unit tests of the pod's resolv.conf, hosts file and hostname.

use super::*;
use k8s_openapi::api::core::v1::{HostAlias, PodDNSConfig, PodDNSConfigOption, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn pod(policy: Option<&str>, host_network: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web-0".into()),
            namespace: Some("shop".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            dns_policy: policy.map(String::from),
            host_network: Some(host_network),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn dns() -> Dns {
    Dns {
        cluster_dns: vec!["10.96.0.10".parse().unwrap()],
        domain: "cluster.local".into(),
        node_resolv: "nameserver 192.168.1.1\nsearch lab.example\noptions edns0\n".into(),
    }
}

#[test]
fn cluster_first_uses_cluster_dns_and_the_namespace() {
    assert_eq!(
        resolv_conf(&pod(None, false), &dns()),
        "search shop.svc.cluster.local svc.cluster.local cluster.local lab.example\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
}

#[test]
fn host_network_and_default_use_the_node() {
    let node = "search lab.example\nnameserver 192.168.1.1\noptions edns0\n";
    assert_eq!(resolv_conf(&pod(None, true), &dns()), node);
    assert_eq!(resolv_conf(&pod(Some("Default"), false), &dns()), node);
    // Without cluster DNS, ClusterFirst falls back to the node's.
    let mut no_dns = dns();
    no_dns.cluster_dns.clear();
    assert_eq!(resolv_conf(&pod(None, false), &no_dns), node);
    let with_host_net = resolv_conf(&pod(Some("ClusterFirstWithHostNet"), true), &dns());
    assert!(
        with_host_net.contains("nameserver 10.96.0.10"),
        "{with_host_net}"
    );
}

#[test]
fn dns_config_merges() {
    let mut p = pod(Some("None"), false);
    p.spec.as_mut().unwrap().dns_config = Some(PodDNSConfig {
        nameservers: Some(vec!["1.2.3.4".into()]),
        searches: Some(vec!["a.example".into()]),
        options: Some(vec![PodDNSConfigOption {
            name: Some("ndots".into()),
            value: Some("2".into()),
        }]),
    });
    assert_eq!(
        resolv_conf(&p, &dns()),
        "search a.example\nnameserver 1.2.3.4\noptions ndots:2\n"
    );
}

#[test]
fn hosts_and_hostnames() {
    let mut p = pod(None, false);
    let spec = p.spec.as_mut().unwrap();
    spec.hostname = Some("db".into());
    spec.subdomain = Some("dbs".into());
    spec.host_aliases = Some(vec![HostAlias {
        ip: "10.0.0.9".into(),
        hostnames: Some(vec!["foo".into(), "bar".into()]),
    }]);
    let hosts = hosts_file(&p, &["10.244.1.4".parse().unwrap()], "cluster.local");
    assert!(hosts.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
    assert!(
        hosts.contains("10.244.1.4\tdb.dbs.shop.svc.cluster.local\tdb\n"),
        "{hosts}"
    );
    assert!(hosts.ends_with("# Entries added by HostAliases.\n10.0.0.9\tfoo\tbar\n"));
    let long = Pod {
        metadata: ObjectMeta {
            name: Some(format!("{}-x", "a".repeat(62))),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(hostname(&long), "a".repeat(62));
}
