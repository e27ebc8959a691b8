//! A hand-made picture for the rendering tests: three nodes on one
//! underlay, pods on two of them plus one pending, a VXLAN pair, a one-way
//! host-gw route, two Services and a delivered trace.

use super::*;

pub(crate) fn sample() -> LabPicture {
    let node = |name: &str, n: u8, vxlan: bool| NodeBox {
        name: name.into(),
        underlay: "underlay".into(),
        eth0_ip: format!("192.168.56.{}/24", 10 + n),
        eth0_mac: format!("02:50:57:fe:4b:{:02x}", 0x50 + n),
        cni0: Some(format!("10.244.{n}.1/24")),
        vxlan: vxlan.then(|| format!("10.244.{n}.0/32 02:70:c0:a8:38:{n:02x}")),
        pod_cidr: format!("10.244.{n}.0/24"),
        from_kernel: true,
    };
    let pod = |ns: &str, name: &str, node: Option<&str>, ip: Option<&str>| PodBox {
        namespace: ns.into(),
        name: name.into(),
        node: node.map(Into::into),
        ip: ip.map(Into::into),
        host_network: false,
        ready: node.is_some(),
    };
    let link = |from: &str, to: &str, kind: LinkKind, route: &str| NodeLink {
        from: from.into(),
        to: to.into(),
        kind,
        route: route.into(),
    };
    LabPicture {
        lab: "example".into(),
        control_plane: "files".into(),
        routing: "vxlan".into(),
        pod_cidr: "10.244.0.0/16".into(),
        service_cidr: "10.96.0.0/12".into(),
        underlays: vec![UnderlayBox {
            name: "underlay".into(),
            subnet: "192.168.56.0/24".into(),
            router_ip: "192.168.56.1".into(),
        }],
        external: Some(ExternalBox {
            name: "external".into(),
            ip: "203.0.113.10/24".into(),
            subnet: "203.0.113.0/24".into(),
            gateway: "203.0.113.1".into(),
        }),
        nodes: vec![
            node("controlplane", 0, false),
            node("node01", 1, true),
            node("node02", 2, true),
        ],
        pods: vec![
            pod("apps", "web-1", Some("node01"), Some("10.244.1.4")),
            pod("apps", "web-2", Some("node02"), Some("10.244.2.4")),
            pod("default", "client", Some("node01"), Some("10.244.1.5")),
            pod("default", "waiting", None, None),
        ],
        links: vec![
            link(
                "node01",
                "node02",
                LinkKind::Vxlan,
                "10.244.2.0/24 via 10.244.2.0 dev podwire.1 onlink",
            ),
            link(
                "node02",
                "node01",
                LinkKind::Vxlan,
                "10.244.1.0/24 via 10.244.1.0 dev podwire.1 onlink",
            ),
            link(
                "controlplane",
                "node01",
                LinkKind::HostGw,
                "10.244.1.0/24 via 192.168.56.11 dev eth0",
            ),
        ],
        services: vec![
            ServiceBox {
                namespace: "apps".into(),
                name: "web".into(),
                kind: "NodePort".into(),
                cluster_ip: "10.96.0.3".into(),
                ports: vec!["80→8080/TCP nodePort 30080".into()],
                endpoints: vec![
                    EndpointRef {
                        ip: "10.244.1.4".into(),
                        pod: Some(("apps".into(), "web-1".into())),
                        ready: true,
                    },
                    EndpointRef {
                        ip: "10.244.2.4".into(),
                        pod: Some(("apps".into(), "web-2".into())),
                        ready: true,
                    },
                ],
            },
            ServiceBox {
                namespace: "default".into(),
                name: "kubernetes".into(),
                kind: "ClusterIP".into(),
                cluster_ip: "10.96.0.1".into(),
                ports: vec!["443→6443/TCP".into()],
                endpoints: vec![EndpointRef {
                    ip: "192.168.56.10".into(),
                    pod: None,
                    ready: true,
                }],
            },
        ],
        trace: Some(TraceOverlay {
            title: "tcp client → web.apps:80".into(),
            path: vec![
                Step::Pod {
                    namespace: "default".into(),
                    name: "client".into(),
                },
                Step::Node("node01".into()),
                Step::Node("node02".into()),
                Step::Pod {
                    namespace: "apps".into(),
                    name: "web-2".into(),
                },
                Step::Other("somewhere else".into()),
            ],
            service: Some(("apps".into(), "web".into())),
            verdict: "delivered: SYN-ACK from pod apps/web-2 (node02) (10.244.2.4:8080)".into(),
            delivered: true,
            report: "<hop> 1 → pod default/client (node01)\n".into(),
        }),
        notes: Vec::new(),
    }
}
