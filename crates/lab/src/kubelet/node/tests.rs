//! Unit tests of the Node's flags, object and status.

use super::*;

fn config() -> KubeletConfig {
    KubeletConfig {
        node: "node-a".into(),
        kubeconfig: None,
        api_server: None,
        node_ip: "192.168.56.11".parse().unwrap(),
        pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
        taints: parse_taints("dedicated=lab:NoSchedule").unwrap(),
        labels: parse_labels("tier=edge").unwrap(),
        cni_conf_dir: "/etc/cni/net.d".into(),
        cni_bin_dir: "/opt/cni/bin".into(),
        root_dir: "/var/lib/podwire-kubelet".into(),
        cluster_dns: vec!["10.96.0.10".parse().unwrap()],
        cluster_domain: "cluster.local".into(),
        resolv_conf: "/etc/resolv.conf".into(),
        port: 10250,
        tls_cert_file: None,
        tls_private_key_file: None,
        client_ca_file: None,
        agent_health: None,
        exe: "/usr/bin/podwire".into(),
        netns_prefix: "pwk-".into(),
    }
}

fn machine() -> Machine {
    Machine {
        cpus: 2,
        memory: 4 << 30,
        kernel: "6.1.0".into(),
        os_image: "Debian GNU/Linux 12 (bookworm)".into(),
        machine_id: "m".into(),
        boot_id: "b".into(),
    }
}

#[test]
fn flags_parse_and_say_what_is_wrong() {
    let t = parse_taints("a=b:NoExecute, c:NoSchedule").unwrap();
    assert_eq!(
        (
            t[0].key.as_str(),
            t[0].value.as_deref(),
            t[0].effect.as_str()
        ),
        ("a", Some("b"), "NoExecute")
    );
    assert_eq!((t[1].key.as_str(), t[1].value.as_deref()), ("c", None));
    assert!(parse_taints("a=b").unwrap_err().contains("no effect"));
    assert!(
        parse_taints("a=b:Sometimes")
            .unwrap_err()
            .contains("NoSchedule")
    );
    assert!(parse_labels("novalue").is_err());
    assert_eq!(parse_labels("").unwrap().len(), 0);
}

#[test]
fn the_node_object_carries_labels_taints_ranges_and_info() {
    let n = node_object(&config(), &machine());
    let labels = n.metadata.labels.unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], "node-a");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["tier"], "edge");
    let spec = n.spec.unwrap();
    assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.1.0/24"));
    assert_eq!(spec.taints.unwrap()[0].key, "dedicated");
    let status = n.status.unwrap();
    let addresses = status.addresses.unwrap();
    assert_eq!(
        (addresses[0].type_.as_str(), addresses[0].address.as_str()),
        ("InternalIP", "192.168.56.11")
    );
    assert_eq!(status.capacity.unwrap()["memory"].0, "4194304Ki");
    let info = status.node_info.unwrap();
    assert_eq!(info.kubelet_version, "v1.37.2");
    assert!(info.container_runtime_version.starts_with("podwire://"));
    assert_eq!(
        status
            .daemon_endpoints
            .unwrap()
            .kubelet_endpoint
            .unwrap()
            .port,
        10250
    );
}

#[test]
fn ready_follows_the_verdict_and_keeps_transition_times() {
    let t0 = Timestamp::from_second(1_700_000_000).unwrap();
    let t1 = Timestamp::from_second(1_700_000_010).unwrap();
    let ready = |s: &NodeStatus| {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .cloned()
            .unwrap()
    };
    let up = node_status(&config(), &machine(), &Ok(()), None, t0);
    assert_eq!(ready(&up).reason.as_deref(), Some("KubeletReady"));
    let still = node_status(&config(), &machine(), &Ok(()), Some(&up), t1);
    assert_eq!(ready(&still).last_transition_time, Some(Time(t0)));
    assert_eq!(ready(&still).last_heartbeat_time, Some(Time(t1)));
    let down = node_status(
        &config(),
        &machine(),
        &Err("no CNI configuration".into()),
        Some(&still),
        t1,
    );
    let c = ready(&down);
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref(), c.message.as_deref()),
        (
            "False",
            Some("KubeletNotReady"),
            Some("no CNI configuration")
        )
    );
    assert_eq!(c.last_transition_time, Some(Time(t1)));
}
