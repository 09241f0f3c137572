//! The kubeconfig the simulator writes for kubectl and kube-rs.

use base64::Engine;

/// Renders a kubeconfig with one cluster, user and context named `kubesim`, set as current.
pub fn render(server_url: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kubesim
  cluster:
    server: {server_url}
    certificate-authority-data: {ca}
users:
- name: kubesim
  user:
    token: {token}
contexts:
- name: kubesim
  context:
    cluster: kubesim
    user: kubesim
    namespace: default
current-context: kubesim
preferences: {{}}
"
    )
}
