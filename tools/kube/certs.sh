#!/usr/bin/env bash
# A CA, serving and client certificates, the service-account key pair and one kubeconfig per
# client, under $KUBE_STATE/pki (openssl). Idempotent: does nothing once the CA exists.
set -euo pipefail
. "$(dirname "$0")/env.sh"
P=$KUBE_STATE/pki
[ -f "$P/ca.crt" ] && exit 0
mkdir -p "$P" && cd "$P" && umask 077
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
  -subj "/CN=graven-kube-ca" 2>/dev/null
# name, subject, extendedKeyUsage, subjectAltName (optional)
cert() {
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$3"
    [ -n "${4:-}" ] && echo "subjectAltName=$4"
  } > "$1.ext"
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
svc=kubernetes.default.svc
cert apiserver "/CN=kube-apiserver" serverAuth \
  "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:$svc,DNS:$svc.cluster.local,IP:127.0.0.1,IP:$APISERVER_SVC_IP,IP:$NODE_IP"
cert kubelet-serving "/CN=$NODE_NAME" serverAuth "DNS:$NODE_NAME,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
cert admin "/O=system:masters/CN=graven-kube-admin" clientAuth
cert controller-manager "/CN=system:kube-controller-manager" clientAuth
cert scheduler "/CN=system:kube-scheduler" clientAuth
cert kube-proxy "/CN=system:kube-proxy" clientAuth
cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
b64() { base64 -w0 < "$1"; }
for user in admin controller-manager scheduler kube-proxy kubelet; do
  cat > "$user.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: graven-kube
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: $(b64 ca.crt)
users:
- name: $user
  user:
    client-certificate-data: $(b64 "$user.crt")
    client-key-data: $(b64 "$user.key")
contexts:
- name: graven-kube
  context: {cluster: graven-kube, user: $user}
current-context: graven-kube
KC
done
echo "certificates and kubeconfigs in $P"
