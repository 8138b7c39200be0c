#!/bin/sh
# make_certs.sh: regenerate the TLS test certificates of tests/unit/security/tls.c with the
# openssl CLI. Everything is valid from a day before generation for 20 years, except
# expired.pem (valid in the year 2000 only).
#
#   ca.pem            "Polis Test CA" (RSA 2048), signs everything below but other-*
#   server-a.pem      a.test, localhost, 127.0.0.1          (RSA 2048)
#   server-b.pem      b.test, www.b.test                     (EC P-256: a key type unlike a's)
#   wildcard.pem      *.wild.test                            (EC P-256)
#   expired.pem       expired.test, expired on 2001-01-01    (EC P-256)
#   client.pem        client.test, spiffe://polis.test/client, clientAuth (EC P-256)
#   other-ca.pem      "Polis Other CA", unknown to the servers
#   other-client.pem  other-client.test, signed by other-ca
#
# Each *.pem has its key in *.key. `openssl ca` is used throughout because it is the only
# command of OpenSSL 3.0 that takes explicit validity dates. Files are written beside this script.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$(date -u -d '1 day ago' +%Y%m%d%H%M%SZ)
end=$(date -u -d '1 day ago + 20 years' +%Y%m%d%H%M%SZ)

ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
rsa_key() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null; }

# The configuration of `openssl ca` for one signing CA ($1), with one extension section per
# kind of certificate.
ca_conf() {
    mkdir -p "$tmp/$1"
    : >"$tmp/$1/index.txt"
    [ -f "$tmp/$1/serial" ] || echo 10 >"$tmp/$1/serial"
    cat >"$tmp/$1.cnf" <<CNF
[ca]
default_ca = this
[this]
database = $tmp/$1/index.txt
serial = $tmp/$1/serial
new_certs_dir = $tmp/$1
certificate = $1.pem
private_key = $1.key
default_md = sha256
policy = any
copy_extensions = none
unique_subject = no
[any]
organizationName = optional
commonName = supplied
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = \$ENV::EKU
subjectAltName = \$ENV::SAN
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
}

# A self-signed CA: name, subject.
make_ca() {
    rsa_key "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$tmp/$1.csr"
    ca_conf "$1"
    EKU=serverAuth SAN=DNS:unused openssl ca -batch -config "$tmp/$1.cnf" -selfsign \
        -keyfile "$1.key" -extensions ca_ext -notext -startdate "$start" -enddate "$end" \
        -in "$tmp/$1.csr" -out "$1.pem" 2>/dev/null
}

# A leaf signed by a CA: name, key type (ec|rsa), subject, SAN, EKU, CA name[, start, end].
make_leaf() {
    "$2_key" "$1.key"
    openssl req -new -key "$1.key" -subj "$3" -out "$tmp/$1.csr"
    ca_conf "$6"
    EKU=$5 SAN=$4 openssl ca -batch -config "$tmp/$6.cnf" -extensions leaf -notext \
        -startdate "${7:-$start}" -enddate "${8:-$end}" -in "$tmp/$1.csr" -out "$1.pem" 2>/dev/null
}

make_ca ca "/O=Polis Tests/CN=Polis Test CA"
make_ca other-ca "/O=Polis Tests/CN=Polis Other CA"

make_leaf server-a rsa "/O=Polis Tests/CN=a.test" "DNS:a.test,DNS:localhost,IP:127.0.0.1" \
    serverAuth ca
make_leaf server-b ec "/O=Polis Tests/CN=b.test" "DNS:b.test,DNS:www.b.test" serverAuth ca
make_leaf wildcard ec "/O=Polis Tests/CN=*.wild.test" "DNS:*.wild.test" serverAuth ca
make_leaf expired ec "/O=Polis Tests/CN=expired.test" "DNS:expired.test" serverAuth ca \
    20000101000000Z 20010101000000Z
make_leaf client ec "/O=Polis Tests/CN=client.test" \
    "DNS:client.test,URI:spiffe://polis.test/client" clientAuth ca
make_leaf other-client ec "/O=Polis Tests/CN=other-client.test" "DNS:other-client.test" \
    clientAuth other-ca

echo "certificates written to $(pwd)"
