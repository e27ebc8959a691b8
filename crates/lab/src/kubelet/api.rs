//! The API calls the pod side of the kubelet makes, each with the node's
//! own credentials (what the Node authorizer and NodeRestriction allow a
//! kubelet): ConfigMaps and Secrets its pods refer to, ServiceAccount
//! tokens bound to its pods, pod status, and the final delete.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodStatus, Secret, Service, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;

use super::Ctx;
use super::error::{KubeletError, Result};

/// A ConfigMap's keys (data and binaryData); None when it does not exist.
pub async fn config_map(
    ctx: &Ctx,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let cm = api.get_opt(name).await.map_err(|e| {
        ctx.kube
            .error("get", &format!("configmaps/{name} in {ns}"), e)
    })?;
    Ok(cm.map(|cm| {
        let mut out: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        out.extend(
            cm.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        out
    }))
}

/// A Secret's keys; None when it does not exist.
pub async fn secret(ctx: &Ctx, ns: &str, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| ctx.kube.error("get", &format!("secrets/{name} in {ns}"), e))?;
    Ok(secret.map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }))
}

/// Text values of a key map (env variables are text).
pub fn as_text(data: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    data.into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

/// A token of the pod's ServiceAccount bound to the pod (NodeRestriction
/// allows a node no other); its text and expiry.
pub async fn token(
    ctx: &Ctx,
    pod: &Pod,
    audience: Option<&str>,
    expiration_seconds: i64,
) -> Result<(String, Timestamp)> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_string()]),
            expiration_seconds: Some(expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let answer = api
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .map_err(|e| {
            ctx.kube.error(
                "create",
                &format!("serviceaccounts/{account}/token in {ns}"),
                e,
            )
        })?;
    let status = answer.status.unwrap_or_default();
    let token = status.token.filter(|t| !t.is_empty()).ok_or_else(|| {
        KubeletError::Pod(format!(
            "the API server returned no token for serviceaccount {ns}/{account}"
        ))
    })?;
    let expiry = status
        .expiration_timestamp
        .map_or_else(Timestamp::now, |t| t.0);
    Ok((token, expiry))
}

/// Writes the pod's status (strategic merge: conditions others own stay),
/// guarded by the pod's uid so a recreated pod of the same name is never
/// touched.
pub async fn patch_status(ctx: &Ctx, pod: &Pod, status: &PodStatus) -> Result<()> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({"metadata": {"uid": pod.metadata.uid}, "status": status});
    api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
        .map_err(|e| {
            ctx.kube
                .error("patch", &format!("pods/{name}/status in {ns}"), e)
        })?;
    Ok(())
}

/// Deletes the pod object at once (grace 0), only if it is still the pod
/// with `uid`. Gone already is fine.
pub async fn delete_pod(ctx: &Ctx, ns: &str, name: &str, uid: &str) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(ctx
            .kube
            .error("delete", &format!("pods/{name} in {ns}"), e)
            .into()),
    }
}

/// The `kubernetes` Service's ClusterIP and port (for the
/// KUBERNETES_SERVICE_* variables).
pub async fn api_service(ctx: &Ctx) -> Option<(IpAddr, i32)> {
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), "default");
    let svc = api.get_opt("kubernetes").await.ok()??;
    let spec = svc.spec?;
    let ip = spec.cluster_ip?.parse().ok()?;
    let port = spec.ports?.first()?.port;
    Some((ip, port))
}
