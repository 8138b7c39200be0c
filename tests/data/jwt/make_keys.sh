#!/bin/sh
# Generate the JWT test keys and the TLS files of the JWKS test server with openssl. Run once;
# the results are committed (test keys only, never used anywhere else). Running it again makes
# new keys, after which make_tokens.py must be run again too.
set -eu
cd "$(dirname "$0")"
mkdir -p keys tls

rsa() { # name bits
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:"$2" -out "keys/$1.key.pem" 2>/dev/null
    openssl pkey -in "keys/$1.key.pem" -pubout -out "keys/$1.pub.pem"
}
ec() { # name curve
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:"$2" -out "keys/$1.key.pem"
    openssl pkey -in "keys/$1.key.pem" -pubout -out "keys/$1.pub.pem"
}
ed() { # name
    openssl genpkey -algorithm ED25519 -out "keys/$1.key.pem"
    openssl pkey -in "keys/$1.key.pem" -pubout -out "keys/$1.pub.pem"
}

# Keys given to the verifier as PEM files.
rsa rsa-1 2048
rsa rsa-pss 2048
rsa rsa-cert 3072
ec ec-256 P-256
ec ec-384 P-384
ed ed-1
openssl req -new -x509 -key keys/rsa-cert.key.pem -subj "/CN=polis test token signer" \
    -days 36500 -out keys/rsa-cert.cert.pem
# HMAC secrets: raw random bytes, used verbatim.
openssl rand -out keys/hs-256.secret 32
openssl rand -out keys/hs-384.secret 48
openssl rand -out keys/hs-512.secret 64
openssl rand -out keys/hs-short.secret 16

# Keys published in the JWK sets (make_tokens.py writes the sets).
rsa jwks-rsa 2048
rsa jwks-rsa-2 2048
ec jwks-ec P-256
ed jwks-ed
openssl rand -out keys/jwks-oct.secret 32

# Keys the verifier never trusts: an attacker's keys, and a key too weak to be accepted.
rsa attacker-rsa 2048
ec attacker-ec P-256
rsa rsa-1024 1024

# TLS for the JWKS test server: a CA and a server certificate for "localhost" only (so a URL
# with 127.0.0.1 must fail hostname verification).
openssl req -new -x509 -newkey rsa:2048 -nodes -keyout tls/ca.key -subj "/CN=polis test CA" \
    -days 36500 -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out tls/ca.pem 2>/dev/null
openssl req -new -newkey rsa:2048 -nodes -keyout tls/server.key -subj "/CN=localhost" \
    -out tls/server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    >tls/server.ext
openssl x509 -req -in tls/server.csr -CA tls/ca.pem -CAkey tls/ca.key -CAcreateserial \
    -days 36500 -extfile tls/server.ext -out tls/server.pem 2>/dev/null
rm -f tls/server.csr tls/server.ext tls/ca.srl
# A second CA that signed nothing: a client trusting only it must refuse the server.
openssl req -new -x509 -newkey rsa:2048 -nodes -keyout tls/other-ca.key -subj "/CN=other CA" \
    -days 36500 -out tls/other-ca.pem 2>/dev/null
rm -f tls/other-ca.key
