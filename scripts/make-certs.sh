#!/usr/bin/env bash
# Makes the test PKI and the file-based SDS files that envoy/envoy.yaml reads from ${TLS_DIR}.
#   scripts/make-certs.sh DIR
# With the openssl CLI only, all keys ECDSA P-256:
#   DIR/ca.crt, DIR/ca.key           a test CA (made once; kept when the script runs again)
#   DIR/server.crt, DIR/server.key   server certificate, CN localhost, SAN DNS:localhost, IP:127.0.0.1,
#                                    serverAuth, 90 days (the platform's renewal period)
#   DIR/client.crt, DIR/client.key   client certificate, SAN URI spiffe://checkpoint.test/ns/default/sa/client,
#                                    clientAuth (Envoy passes it to checkpoint as source.principal/certificate)
#   DIR/checkpoint.crt, .key         checkpoint's own server certificate for TLS on its gRPC port
#                                    (CHECKPOINT_GRPC_TLS_CERT/KEY), SAN DNS:checkpoint, DNS:localhost, IP:127.0.0.1,
#                                    serverAuth
#   DIR/gateway.crt, .key            the client certificate Envoy presents to checkpoint (mutual TLS on the ext_authz
#                                    cluster, envoy/checkpoint-cluster-mtls.yaml), SAN URI
#                                    spiffe://checkpoint.test/ns/default/sa/gateway, clientAuth
#   DIR/certs/<generation>/          the files of each issue; the SDS files point at the current generation
#   DIR/sds/server_cert.yaml         SDS Secret "server_cert" (tls_certificate)       } the directory Envoy
#   DIR/sds/validation_context.yaml  SDS Secret "validation_context" (client CA)      } watches (watched_directory)
#   DIR/sds/checkpoint_client_cert.yaml  SDS Secret "checkpoint_client_cert" (gateway.crt/key) } read by
#   DIR/sds/checkpoint_server_ca.yaml    SDS Secret "checkpoint_server_ca" (the CA of       } envoy/checkpoint-
#                                        checkpoint.crt)                                    } cluster-mtls.yaml
#
# Running it again on the same DIR rotates: the CA stays, a new server and client certificate are issued into a
# new generation folder, and each SDS file is replaced by an atomic rename (mv) into DIR/sds. That rename is the
# event Envoy's watched_directory waits for, so a running Envoy serves the new certificate without a restart, and
# it never sees a certificate without its key. Generations older than the previous one are deleted.
# checkpoint reads DIR/checkpoint.crt and DIR/checkpoint.key, each replaced by its own rename: between the two it may
# read a certificate with the other's key, which it refuses (logged), keeping the last good pair until its next
# look 5 s later. A Kubernetes Secret volume swaps both files at once.
# DIR must be an absolute or relative path; it is made absolute in the SDS files. Prints the files it wrote.
set -euo pipefail

if [ "$#" -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
command -v openssl >/dev/null 2>&1 || { echo "make-certs: openssl not found (run scripts/setup.sh)" >&2; exit 1; }

mkdir -p "$1"
dir="$(cd "$1" && pwd)"
spiffe_id="spiffe://checkpoint.test/ns/default/sa/client"
gateway_id="spiffe://checkpoint.test/ns/default/sa/gateway"
umask 077 # keys are born private; certificates, SDS files and folders are opened up explicitly below

tmp="$(mktemp -d "$dir/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# ---- CA, once ----------------------------------------------------------------------------------
if [ ! -s "$dir/ca.key" ] || [ ! -s "$dir/ca.crt" ]; then
  ec_key "$tmp/ca.key"
  openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days 3650 -subj "/O=checkpoint test/CN=checkpoint test CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$tmp/ca.crt"
  mv "$tmp/ca.key" "$dir/ca.key"
  mv "$tmp/ca.crt" "$dir/ca.crt"
  chmod 644 "$dir/ca.crt"
fi

# ---- a new generation of leaf certificates -----------------------------------------------------
gen="$(date -u +%Y%m%dT%H%M%S.%N)"
gdir="$dir/certs/$gen"
mkdir -p "$gdir"
chmod 755 "$dir" "$dir/certs" "$gdir"

issue() { # name subject extensions...
  local name="$1" subj="$2" ext="$3"
  ec_key "$gdir/$name.key"
  openssl req -new -key "$gdir/$name.key" -subj "$subj" -out "$tmp/$name.csr"
  printf '%b' "$ext" >"$tmp/$name.ext"
  openssl x509 -req -in "$tmp/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -CAserial "$tmp/ca.srl" -sha256 -days 90 -extfile "$tmp/$name.ext" -out "$gdir/$name.crt" 2>/dev/null
  openssl verify -CAfile "$dir/ca.crt" "$gdir/$name.crt" >/dev/null
  chmod 644 "$gdir/$name.crt"
}

issue server "/O=checkpoint test/CN=localhost" \
  "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nauthorityKeyIdentifier=keyid\n"
issue client "/O=checkpoint test/CN=client" \
  "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=URI:$spiffe_id\nauthorityKeyIdentifier=keyid\n"
issue checkpoint "/O=checkpoint test/CN=checkpoint" \
  "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:checkpoint,DNS:localhost,IP:127.0.0.1\nauthorityKeyIdentifier=keyid\n"
issue gateway "/O=checkpoint test/CN=gateway" \
  "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=URI:$gateway_id\nauthorityKeyIdentifier=keyid\n"
cp "$dir/ca.crt" "$gdir/ca.crt"
chmod 644 "$gdir/ca.crt"

# Stable names for clients (curl --cacert/--cert, the tests): each replaced by one rename.
for f in server.crt server.key client.crt client.key checkpoint.crt checkpoint.key gateway.crt gateway.key; do
  cp -p "$gdir/$f" "$tmp/$f"
  mv -f "$tmp/$f" "$dir/$f"
done

# ---- SDS files: written aside, then renamed into the watched directory --------------------------
mkdir -p "$dir/sds"
chmod 755 "$dir/sds"
cat >"$tmp/server_cert.yaml" <<YAML
# File-based SDS resource read by envoy/envoy.yaml (made by scripts/make-certs.sh; generation $gen).
resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: server_cert
  tls_certificate:
    certificate_chain:
      filename: "$gdir/server.crt"
    private_key:
      filename: "$gdir/server.key"
YAML
cat >"$tmp/validation_context.yaml" <<YAML
# File-based SDS resource read by envoy/envoy.yaml (made by scripts/make-certs.sh; generation $gen).
# The CA that client certificates must chain to; a client certificate is optional.
resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: validation_context
  validation_context:
    trusted_ca:
      filename: "$gdir/ca.crt"
YAML
cat >"$tmp/checkpoint_client_cert.yaml" <<YAML
# File-based SDS resource read by envoy/checkpoint-cluster-mtls.yaml (made by scripts/make-certs.sh; generation $gen).
# The client certificate Envoy presents to checkpoint on the ext_authz cluster.
resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: checkpoint_client_cert
  tls_certificate:
    certificate_chain:
      filename: "$gdir/gateway.crt"
    private_key:
      filename: "$gdir/gateway.key"
YAML
cat >"$tmp/checkpoint_server_ca.yaml" <<YAML
# File-based SDS resource read by envoy/checkpoint-cluster-mtls.yaml (made by scripts/make-certs.sh; generation $gen).
# The CA that checkpoint's server certificate must chain to.
resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: checkpoint_server_ca
  validation_context:
    trusted_ca:
      filename: "$gdir/ca.crt"
YAML
chmod 644 "$tmp/server_cert.yaml" "$tmp/validation_context.yaml" "$tmp/checkpoint_client_cert.yaml" \
  "$tmp/checkpoint_server_ca.yaml"
for f in server_cert.yaml validation_context.yaml checkpoint_client_cert.yaml checkpoint_server_ca.yaml; do
  mv -f "$tmp/$f" "$dir/sds/$f"
done

# ---- keep the current and the previous generation -----------------------------------------------
mapfile -t gens < <(find "$dir/certs" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort)
if [ "${#gens[@]}" -gt 2 ]; then
  for old in "${gens[@]:0:${#gens[@]}-2}"; do
    [ "$old" = "$gen" ] || rm -rf "${dir:?}/certs/$old"
  done
fi

echo "make-certs: generation $gen in $dir"
echo "  ca.crt server.crt server.key client.crt client.key (client SAN $spiffe_id)"
echo "  checkpoint.crt checkpoint.key gateway.crt gateway.key (gateway SAN $gateway_id)"
echo "  sds/server_cert.yaml sds/validation_context.yaml sds/checkpoint_client_cert.yaml sds/checkpoint_server_ca.yaml"
