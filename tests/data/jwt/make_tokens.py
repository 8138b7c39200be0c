#!/usr/bin/python3
"""make_tokens.py: generate the committed JWT test corpus from the committed test keys.

Writes tokens/{good,bad,https}/*.jwt (one token per file, no newline), the JWK sets in keys/,
manifest.json (every token with its expected result and the verifier configuration it is
meant for) and the seed corpus of the fuzzer (fuzz/jwt/corpus). Good tokens are checked
against PyJWT and jwcrypto before they are written, so the corpus does not depend on Polis
being right. Run with Debian's python3 (python3-jwt, python3-jwcrypto):

    /usr/bin/python3 tests/data/jwt/make_tokens.py
    /usr/bin/python3 tests/data/jwt/make_tokens.py --fuzz-jwks   # the C literal of fuzz/jwt.c

ECDSA and RSA-PSS signatures are randomised, so every run rewrites those tokens.
"""

import base64
import hashlib
import hmac
import json
import os
import shutil
import sys

import jwt
from jwt.algorithms import get_default_algorithms
from jwcrypto import jwk, jws
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
FUZZ_CORPUS = os.path.join(ROOT, "fuzz", "jwt", "corpus")

# Times: every token is judged at a "now" between NOW_MIN and NOW_MAX (2023-11-14 .. 2096-10-02),
# so the corpus works with the real clock for decades; the unit test also uses UNIT_NOW.
IAT = 1700000000
EXP = 4102444800  # 2100-01-01
EXPIRED = 1700003600
FUTURE = 4000000000
NOW_MIN = IAT + 3600 + 120
NOW_MAX = FUTURE - 120
UNIT_NOW = 1800000000

ISS_FILES = "https://issuer.polis.test"
ISS_JWKS = "https://jwks.polis.test"
ISS_NOEXP = "https://noexp.polis.test"
ISS_RESTRICTED = "https://restricted.polis.test"
ISS_REMOTE = "https://remote.polis.test"
AUD = "polis-api"

ALL_ALGS = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "ES384",
            "EdDSA"]

CONFIGS = {
    "main": {
        "cache_entries": 1024,
        "issuers": [
            {
                "name": "files",
                "issuer": ISS_FILES,
                "audiences": ["polis-api", "polis-admin"],
                "algorithms": ALL_ALGS,
                "leeway_ms": 60000,
                "keys": [
                    {"file": "keys/rsa-1.pub.pem", "kid": "rsa-1"},
                    {"file": "keys/rsa-pss.pub.pem", "kid": "rsa-pss", "alg": "PS256"},
                    {"file": "keys/rsa-cert.cert.pem", "kid": "rsa-cert", "alg": "RS256"},
                    {"file": "keys/ec-256.pub.pem", "kid": "ec-256"},
                    {"file": "keys/ec-384.pub.pem", "kid": "ec-384"},
                    {"file": "keys/ed-1.pub.pem", "kid": "ed-1"},
                    {"file": "keys/hs-256.secret", "kid": "hs-256", "alg": "HS256",
                     "secret": True},
                    {"file": "keys/hs-384.secret", "kid": "hs-384", "alg": "HS384",
                     "secret": True},
                    {"file": "keys/hs-512.secret", "kid": "hs-512", "alg": "HS512",
                     "secret": True},
                ],
            },
            {
                "name": "jwks",
                "issuer": ISS_JWKS,
                "audiences": ["polis-api"],
                "algorithms": ["RS256", "PS256", "ES256", "EdDSA", "HS256"],
                "leeway_ms": 60000,
                "jwks_file": "keys/jwks.json",
            },
            {
                "name": "noexp",
                "issuer": ISS_NOEXP,
                "audiences": ["polis-api"],
                "algorithms": ["ES256"],
                "leeway_ms": 60000,
                "exp_optional": True,
                "keys": [{"file": "keys/ec-256.pub.pem", "kid": "ec-256"}],
            },
            {
                "name": "restricted",
                "issuer": ISS_RESTRICTED,
                "audiences": ["polis-api"],
                "algorithms": ["RS256"],
                "leeway_ms": 60000,
                "keys": [{"file": "keys/rsa-1.pub.pem", "kid": "rsa-1"}],
            },
        ],
    },
    "https": {
        "cache_entries": 1024,
        "note": "the JWKS test server serves keys/remote-jwks-1.json, then -2, then -3 "
                "(rotation); {port} is the server's port",
        "issuers": [
            {
                "name": "remote",
                "issuer": ISS_REMOTE,
                "audiences": ["polis-api"],
                "algorithms": ["RS256", "ES256"],
                "leeway_ms": 60000,
                "jwks_url": "https://localhost:{port}/jwks.json",
                "jwks_ca_file": "tls/ca.pem",
                "refresh_ms": 600000,
                "min_refresh_ms": 30000,
            },
        ],
    },
}


def rd(path):
    with open(os.path.join(HERE, path), "rb") as f:
        return f.read()


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jdump(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


ALGS = get_default_algorithms()
KEYS = {}  # name -> private key object (or secret bytes)


def key(name):
    if name not in KEYS:
        if name.endswith(".secret"):
            KEYS[name] = rd("keys/" + name)
        else:
            KEYS[name] = rd("keys/" + name + ".key.pem")
    return KEYS[name]


def sign(alg, keyname, msg):
    """Sign msg with a private key or secret of keys/, the JOSE way for alg."""
    k = key(keyname)
    if alg.startswith("HS"):
        h = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        return hmac.new(k, msg, h).digest()
    a = ALGS[alg]
    return a.sign(msg, a.prepare_key(k))


def make(header, payload, alg=None, keyname=None, sig=None):
    """A compact JWS: header and payload are dicts (dumped) or bytes (taken as they are)."""
    h = header if isinstance(header, bytes) else jdump(header)
    p = payload if isinstance(payload, bytes) else jdump(payload)
    si = (b64u(h) + "." + b64u(p)).encode()
    if sig is None:
        sig = sign(alg, keyname, si) if alg else b""
    return si.decode() + "." + b64u(sig)


JTI = [0]


def claims(iss=ISS_FILES, **over):
    JTI[0] += 1
    c = {"sub": "user-123", "aud": AUD, "iat": IAT, "nbf": IAT, "exp": EXP,
         "jti": "t-%04d" % JTI[0], "scope": "read write"}
    over.setdefault("iss", iss)
    for k, v in over.items():
        if v is DROP:
            c.pop(k, None)
        else:
            c[k] = v
    return c


DROP = object()

# Which signing key goes with each configured kid (files issuer).
FILES_KID = {"rsa-1": "rsa-1", "rsa-pss": "rsa-pss", "rsa-cert": "rsa-cert", "ec-256": "ec-256",
             "ec-384": "ec-384", "ed-1": "ed-1", "hs-256": "hs-256.secret",
             "hs-384": "hs-384.secret", "hs-512": "hs-512.secret"}


def std(alg, kid, payload=None, typ="JWT", extra=None, keyname=None):
    h = {"alg": alg}
    if typ is not None:
        h["typ"] = typ
    if kid is not None:
        h["kid"] = kid
    h.update(extra or {})
    if keyname is None:
        keyname = FILES_KID.get(kid) or JWKS_KID.get(kid)
    return make(h, payload if payload is not None else claims(), alg, keyname)


# ---- JWK sets ------------------------------------------------------------------------------


def jwk_pub(keyname, kid, alg=None, use="sig"):
    k = jwk.JWK.from_pem(key(keyname))
    d = json.loads(k.export_public())
    d["kid"] = kid
    if alg:
        d["alg"] = alg
    if use:
        d["use"] = use
    return d


def jwk_oct(secretname, kid, alg=None):
    d = {"kty": "oct", "kid": kid, "k": b64u(key(secretname))}
    if alg:
        d["alg"] = alg
    return d


JWKS_KID = {"jwks-rsa": "jwks-rsa", "jwks-ec": "jwks-ec", "jwks-ed": "jwks-ed",
            "jwks-oct": "jwks-oct.secret", "remote-1": "jwks-rsa", "remote-2": "jwks-rsa-2"}


def write_json(path, obj):
    with open(os.path.join(HERE, path), "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def write_jwks():
    jwks = {"keys": [
        jwk_pub("jwks-rsa", "jwks-rsa", "RS256"),
        jwk_pub("jwks-ec", "jwks-ec"),
        jwk_pub("jwks-ed", "jwks-ed", "EdDSA", use=None),
        jwk_oct("jwks-oct.secret", "jwks-oct", "HS256"),
        # Keys the verifier must skip: an encryption key, an unknown type, an unsupported curve.
        dict(jwk_pub("attacker-rsa", "enc-only", "RSA-OAEP"), use="enc"),
        {"kty": "XYZ", "kid": "unknown-type"},
        {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
    ]}
    write_json("keys/jwks.json", jwks)
    r1 = jwk_pub("jwks-rsa", "remote-1", "RS256")
    r2 = jwk_pub("jwks-rsa-2", "remote-2", "RS256")
    write_json("keys/remote-jwks-1.json", {"keys": [r1]})
    write_json("keys/remote-jwks-2.json", {"keys": [r1, r2]})
    write_json("keys/remote-jwks-3.json", {"keys": [r2]})


def fuzz_jwks():
    """The files issuer's keys as one JWK set (the fuzzer has no files)."""
    keys = [
        jwk_pub("rsa-1", "rsa-1", use=None),
        jwk_pub("rsa-pss", "rsa-pss", "PS256", use=None),
        jwk_pub("ec-256", "ec-256", use=None),
        jwk_pub("ec-384", "ec-384", use=None),
        jwk_pub("ed-1", "ed-1", use=None),
        jwk_oct("hs-256.secret", "hs-256", "HS256"),
        jwk_oct("hs-384.secret", "hs-384", "HS384"),
        jwk_oct("hs-512.secret", "hs-512", "HS512"),
    ]
    return {"keys": keys}


# ---- Tokens --------------------------------------------------------------------------------

GOOD = []  # (name, token, issuer, alg, why)
BAD = []  # (name, token, reason, why)
HTTPS = []  # (name, token, why)


def good(name, tok, issuer, alg, why):
    GOOD.append((name, tok, issuer, alg, why))


def bad(name, tok, reason, why):
    BAD.append((name, tok, reason, why))


def tamper_char(s, i):
    """Replace the character at i by another base64url character that changes its value."""
    c = s[i]
    r = "A" if c != "A" else "B"
    return s[:i] + r + s[i + 1:]


def make_good():
    for alg, kid in [("HS256", "hs-256"), ("HS384", "hs-384"), ("HS512", "hs-512"),
                     ("RS256", "rsa-1"), ("RS384", "rsa-1"), ("RS512", "rsa-1"),
                     ("PS256", "rsa-pss"), ("ES256", "ec-256"), ("ES384", "ec-384"),
                     ("EdDSA", "ed-1")]:
        good(alg.lower(), std(alg, kid), "files", alg, "%s with the key %s" % (alg, kid))
    good("ps256-unpinned-rsa-key", std("PS256", "rsa-1"), "files", "PS256",
         "PS256 with an RSA key that is not pinned to one algorithm")
    good("rs256-certificate-key", std("RS256", "rsa-cert"), "files", "RS256",
         "RS256, the key given as a certificate (RSA 3072)")
    for alg, kn in [("RS256", "rsa-1"), ("ES256", "ec-256"), ("EdDSA", "ed-1"),
                    ("HS256", "hs-256.secret"), ("ES384", "ec-384")]:
        good(alg.lower() + "-no-kid", std(alg, None, keyname=kn), "files", alg,
             "no kid: the issuer's keys allowing %s are tried" % alg)
    good("aud-array", std("ES256", "ec-256", claims(aud=["other", "polis-api"])), "files",
         "ES256", "aud is an array containing a configured audience")
    good("aud-second-audience", std("ES256", "ec-256", claims(aud="polis-admin")), "files",
         "ES256", "aud is the second configured audience")
    good("typ-at-jwt", std("RS256", "rsa-1", typ="at+jwt"), "files", "RS256",
         "typ at+jwt (RFC 9068)")
    good("typ-application-at-jwt", std("RS256", "rsa-1", typ="application/at+jwt"), "files",
         "RS256", "typ application/at+jwt, the full media type")
    good("typ-lowercase", std("ES256", "ec-256", typ="jwt"), "files", "ES256",
         "typ compared case-insensitively")
    good("no-typ", std("EdDSA", "ed-1", typ=None), "files", "EdDSA", "typ absent")
    good("header-unknown-fields", std("RS256", "rsa-1", extra={"x-extra": 1, "jku":
         "https://attacker.test/jwks.json"}), "files", "RS256",
         "unknown header fields and a jku are ignored (keys never come from the token)")
    good("no-nbf-no-iat", std("ES256", "ec-256", claims(nbf=DROP, iat=DROP)), "files", "ES256",
         "only exp among the time claims")
    good("exp-fractional", std("ES256", "ec-256", claims(exp=4102444800.5)), "files", "ES256",
         "exp as a non-integer NumericDate")
    good("scope-string", std("RS256", "rsa-1", claims(scope="read write admin")), "files",
         "RS256", "scope string with three scopes")
    good("scp-array", std("RS256", "rsa-1", claims(scope=DROP, scp=["read", "write"])),
         "files", "RS256", "scopes as an scp array")
    good("claims-unicode", std("EdDSA", "ed-1", claims(name="Zoë Ünïcødé ✓", groups=["a", "b"],
         tenant=42, admin=True)), "files", "EdDSA", "non-ASCII and non-string claims")
    good("jwks-rs256", std("RS256", "jwks-rsa", claims(ISS_JWKS)), "jwks", "RS256",
         "RS256, the key from a JWK set file (alg pinned by the JWK)")
    good("jwks-es256", std("ES256", "jwks-ec", claims(ISS_JWKS)), "jwks", "ES256",
         "ES256, the key from a JWK set file (no alg in the JWK)")
    good("jwks-eddsa", std("EdDSA", "jwks-ed", claims(ISS_JWKS)), "jwks", "EdDSA",
         "EdDSA, the key from a JWK set file")
    good("jwks-hs256-oct", std("HS256", "jwks-oct", claims(ISS_JWKS)), "jwks", "HS256",
         "HS256 with an oct JWK from a JWK set file")
    good("noexp-issuer-no-exp", std("ES256", "ec-256", claims(ISS_NOEXP, exp=DROP)), "noexp",
         "ES256", "no exp, for an issuer where exp is optional")
    good("restricted-rs256", std("RS256", "rsa-1", claims(ISS_RESTRICTED)), "restricted",
         "RS256", "the only algorithm the restricted issuer allows")
    # A token of exactly 8 KiB, the largest accepted.
    pad = 0
    while True:
        t = std("HS256", "hs-256", claims(pad="x" * pad, jti="max-size"))
        if len(t) >= 8192:
            break
        pad += 1
    while len(t) > 8192:
        pad -= 1
        t = std("HS256", "hs-256", claims(pad="x" * pad, jti="max-size"))
    if len(t) != 8192:  # base64 steps of 4 characters: widen another claim by one byte
        for extra in range(1, 4):
            t = std("HS256", "hs-256", claims(pad="x" * pad, jti="max-size" + "y" * extra))
            if len(t) == 8192:
                break
    assert len(t) == 8192, len(t)
    good("size-8192-bytes", t, "files", "HS256", "exactly 8192 bytes, the largest accepted")


def make_bad():
    c = claims()
    # alg none and friends.
    for name, a in [("alg-none", "none"), ("alg-none-capital", "None"),
                    ("alg-none-upper", "NONE"), ("alg-none-mixed", "nOnE")]:
        bad(name, make({"alg": a, "typ": "JWT"}, c), "alg", "alg %r, no signature" % a)
    hs_sig = sign("HS256", "hs-256.secret", b"x")
    t = make({"alg": "none", "kid": "hs-256"}, c)
    bad("alg-none-with-signature", t + b64u(hs_sig), "alg", "alg none with a signature")
    bad("alg-none-two-segments", make({"alg": "none"}, c).rstrip("."), "malformed",
        "alg none without the final dot")
    for name, a, why in [("alg-empty", "", "empty alg"), ("alg-null", None, "alg null"),
                         ("alg-number", 256, "alg a number"),
                         ("alg-array", ["HS256"], "alg an array"),
                         ("alg-lowercase-hs256", "hs256", "alg names are case-sensitive"),
                         ("alg-trailing-space", "HS256 ", "alg with a trailing space"),
                         ("alg-es512-unsupported", "ES512", "ES512 is not supported"),
                         ("alg-ps384-unsupported", "PS384", "PS384 is not supported"),
                         ("alg-hs1024-unknown", "HS1024", "unknown algorithm"),
                         ("alg-rsa-oaep", "RSA-OAEP", "an encryption algorithm")]:
        bad(name, make({"alg": a, "kid": "hs-256"}, c, sig=hs_sig), "alg", why)
    bad("alg-missing", make({"typ": "JWT", "kid": "hs-256"}, c, sig=hs_sig), "alg",
        "no alg")
    # Algorithm confusion: the public key (PEM) used as an HMAC secret.
    for name, kid, pem, reason in [
            ("hs256-rsa-public-key-as-secret", "rsa-1", "keys/rsa-1.pub.pem", "alg"),
            ("hs256-ec-public-key-as-secret", "ec-256", "keys/ec-256.pub.pem", "alg"),
            ("hs256-certificate-as-secret", "rsa-cert", "keys/rsa-cert.cert.pem", "alg"),
            ("hs256-rsa-public-key-as-secret-no-kid", None, "keys/rsa-1.pub.pem",
             "signature")]:
        h = {"alg": "HS256", "typ": "JWT"}
        if kid:
            h["kid"] = kid
        si = (b64u(jdump(h)) + "." + b64u(jdump(c))).encode()
        sig = hmac.new(rd(pem), si, hashlib.sha256).digest()
        bad(name, si.decode() + "." + b64u(sig), reason,
            "HS256 with the public key file %s as the HMAC secret" % pem)
    si = (b64u(jdump({"alg": "HS256", "kid": "jwks-rsa"})) + "." +
          b64u(jdump(claims(ISS_JWKS)))).encode()
    jwks_rsa_pub = jwk.JWK.from_pem(key("jwks-rsa")).export_to_pem()
    bad("hs256-jwks-rsa-public-key-as-secret",
        si.decode() + "." + b64u(hmac.new(jwks_rsa_pub, si, hashlib.sha256).digest()), "alg",
        "HS256 with the PEM of a JWKS RSA key as the secret")
    # Algorithm pinned per key and per issuer.
    bad("rs256-key-pinned-to-ps256", std("RS256", "rsa-pss"), "alg",
        "RS256 for the key pinned to PS256")
    bad("es256-with-rsa-kid", std("ES256", "rsa-1", keyname="ec-256"), "alg",
        "ES256 naming an RSA key")
    bad("rs256-with-ec-kid", std("RS256", "ec-256", keyname="rsa-1"), "alg",
        "RS256 naming an EC key")
    bad("es384-with-p256-kid", std("ES384", "ec-256", keyname="ec-384"), "alg",
        "ES384 naming a P-256 key")
    bad("eddsa-with-hmac-kid", std("EdDSA", "hs-256", keyname="ed-1"), "alg",
        "EdDSA naming an HMAC secret")
    bad("hs512-key-pinned-to-hs256", std("HS512", "hs-256", keyname="hs-256.secret"), "alg",
        "HS512 with the secret pinned to HS256")
    bad("hs256-key-pinned-to-hs512", std("HS256", "hs-512", keyname="hs-512.secret"), "alg",
        "HS256 with the secret pinned to HS512")
    bad("rs256-cert-key-pinned-rs256-as-rs512", std("RS512", "rsa-cert"), "alg",
        "RS512 with the certificate key pinned to RS256")
    bad("restricted-issuer-rs512", std("RS512", "rsa-1", claims(ISS_RESTRICTED)), "alg",
        "RS512 for an issuer allowing only RS256")
    bad("restricted-issuer-es256", std("ES256", "ec-256", claims(ISS_RESTRICTED)), "alg",
        "ES256 for an issuer allowing only RS256")
    bad("jwks-rs384-key-pinned-rs256", std("RS384", "jwks-rsa", claims(ISS_JWKS)), "alg",
        "RS384 for a JWK whose alg is RS256 (and the issuer does not allow RS384)")
    bad("jwks-ps256-key-pinned-rs256", std("PS256", "jwks-rsa", claims(ISS_JWKS)), "alg",
        "PS256 for a JWK whose alg is RS256")
    bad("jwks-enc-key", std("RS256", "enc-only", claims(ISS_JWKS), keyname="attacker-rsa"),
        "no_key", "a key whose use is enc is never used to verify")
    # Time claims.
    bad("expired", std("RS256", "rsa-1", claims(exp=EXPIRED)), "expired", "exp in the past")
    bad("expired-hs256", std("HS256", "hs-256", claims(exp=EXPIRED)), "expired",
        "exp in the past (HS256)")
    bad("expired-jwks", std("ES256", "jwks-ec", claims(ISS_JWKS, exp=EXPIRED)), "expired",
        "exp in the past (key from a JWK set)")
    bad("expired-noexp-issuer", std("ES256", "ec-256", claims(ISS_NOEXP, exp=EXPIRED)),
        "expired", "exp optional but present and past")
    bad("exp-missing", std("RS256", "rsa-1", claims(exp=DROP)), "claims",
        "no exp where it is required")
    for name, v in [("exp-string", str(EXP)), ("exp-null", None), ("exp-bool", True),
                    ("exp-object", {"t": EXP})]:
        bad(name, std("ES256", "ec-256", claims(exp=v)), "claims", "exp is not a number")
    bad("nbf-future", std("RS256", "rsa-1", claims(nbf=FUTURE)), "nbf", "nbf in the future")
    bad("nbf-string", std("RS256", "rsa-1", claims(nbf=str(IAT))), "claims",
        "nbf is not a number")
    bad("iat-future", std("RS256", "rsa-1", claims(iat=FUTURE)), "iat", "iat in the future")
    bad("iat-string", std("RS256", "rsa-1", claims(iat="yesterday")), "claims",
        "iat is not a number")
    # Audience.
    for name, v, why in [("aud-wrong", "other-api", "another audience"),
                         ("aud-array-wrong", ["a", "b"], "an array without our audience"),
                         ("aud-missing", DROP, "no aud"),
                         ("aud-empty-array", [], "an empty array"),
                         ("aud-empty-string", "", "an empty string"),
                         ("aud-number", 1, "a number"),
                         ("aud-null", None, "null"),
                         ("aud-case", "POLIS-API", "audiences are case-sensitive"),
                         ("aud-prefix", "polis-api-extra", "a longer audience"),
                         ("aud-array-number", [1, 2], "an array of numbers"),
                         ("aud-comma-joined", "polis-api,other", "one string, not a list")]:
        bad(name, std("ES256", "ec-256", claims(aud=v)), "audience", "aud: " + why)
    # Issuer.
    for name, v, why in [("iss-wrong", "https://evil.test", "an unknown issuer"),
                         ("iss-missing", DROP, "no iss"),
                         ("iss-case", "HTTPS://ISSUER.POLIS.TEST", "issuers are exact"),
                         ("iss-trailing-slash", ISS_FILES + "/", "a trailing slash"),
                         ("iss-number", 7, "a number"), ("iss-null", None, "null"),
                         ("iss-array", [ISS_FILES], "an array")]:
        bad(name, std("RS256", "rsa-1", claims(iss=v)), "issuer", "iss: " + why)
    bad("iss-other-issuer-with-files-key", std("RS256", "rsa-1", claims(ISS_JWKS)), "no_key",
        "iss of the jwks issuer, signed by a key of another issuer")
    # kid.
    bad("kid-unknown", std("RS256", "rsa-9", keyname="rsa-1"), "no_key", "no key has this kid")
    bad("kid-sql-injection", std("RS256", "rsa-1' OR '1'='1", keyname="rsa-1"), "no_key",
        "a kid that is not a key's")
    for name, kid, why in [("kid-path-traversal", "../../etc/passwd", "a path"),
                           ("kid-absolute-path", "/etc/passwd", "an absolute path"),
                           ("kid-slash", "keys/rsa-1", "a slash"),
                           ("kid-dotdot", "rsa-1..", "two dots"),
                           ("kid-backslash-dotdot", "..\\..\\rsa-1", "backslashes and dots"),
                           ("kid-url", "https://attacker.test/jwks.json", "a URL"),
                           ("kid-newline", "rsa-1\n", "a newline"),
                           ("kid-tab", "rsa\t1", "a tab"),
                           ("kid-del", "rsa-1\x7f", "a DEL"),
                           ("kid-too-long", "k" * 300, "300 bytes long"),
                           ("kid-empty", "", "empty"),
                           ("kid-number", 1, "a number"),
                           ("kid-null", None, "null"),
                           ("kid-object", {"kid": "rsa-1"}, "an object")]:
        bad(name, std("RS256", None, extra={"kid": kid}, keyname="rsa-1"), "kid", "kid: " + why)
    bad("kid-nul", std("RS256", "rsa-1\x00", keyname="rsa-1"), "malformed",
        "kid with a NUL (JSON \\u0000, refused by the JSON parser)")
    # Header.
    for name, typ in [("typ-jws", "JWS"), ("typ-jose", "JOSE"), ("typ-empty", ""),
                      ("typ-number", 1), ("typ-jwe", "JWE"), ("typ-dpop", "dpop+jwt")]:
        bad(name, std("ES256", "ec-256", typ=typ), "typ", "typ %r" % (typ,))
    bad("crit-exp", std("ES256", "ec-256", extra={"crit": ["exp"], "exp": EXP}), "crit",
        "crit header")
    bad("crit-b64", std("ES256", "ec-256", extra={"crit": ["b64"], "b64": False}), "crit",
        "crit with b64 false (RFC 7797)")
    bad("crit-empty", std("ES256", "ec-256", extra={"crit": []}), "crit", "empty crit")
    bad("cty-jwt-nested", std("ES256", "ec-256", extra={"cty": "JWT"}), "header",
        "cty JWT: a nested token")
    raw = {
        "header-array": b'["alg","HS256"]',
        "header-string": b'"HS256"',
        "header-number": b"256",
        "header-invalid-json": b'{"alg":"HS256",',
        "header-duplicate-alg": b'{"alg":"HS256","kid":"hs-256","alg":"none"}',
        "header-duplicate-kid": b'{"alg":"HS256","kid":"hs-256","kid":"hs-512"}',
        "header-invalid-utf8": b'{"alg":"HS256","kid":"hs-256","x":"\xff\xfe"}',
        "header-trailing-garbage": b'{"alg":"HS256","kid":"hs-256"}x',
        "header-empty": b"",
        "header-single-quotes": b"{'alg':'HS256'}",
    }
    for name, h in raw.items():
        si = (b64u(h) + "." + b64u(jdump(c))).encode()
        bad(name, si.decode() + "." + b64u(sign("HS256", "hs-256.secret", si)), "malformed",
            "header: " + name[7:].replace("-", " "))
    big = {"alg": "HS256", "kid": "hs-256", "x": "y" * 1100}
    bad("header-oversized", make(big, c, "HS256", "hs-256.secret"), "too_big",
        "a header of more than 1 KiB")
    # A header carrying the attacker's own key: keys never come from the token.
    ak = json.loads(jwk.JWK.from_pem(key("attacker-rsa")).export_public())
    bad("embedded-jwk-header", std("RS256", "rsa-1", extra={"jwk": ak},
                                   keyname="attacker-rsa"), "signature",
        "signed by the key in the jwk header, naming a configured kid")
    bad("jku-attacker-unknown-kid", std("RS256", "attacker", extra={
        "jku": "https://attacker.test/jwks.json"}, keyname="attacker-rsa"), "no_key",
        "a jku and an unknown kid: nothing is fetched")
    bad("x5u-attacker", std("RS256", None, extra={"x5u": "https://attacker.test/c.pem"},
                            keyname="attacker-rsa"), "signature",
        "x5u to the attacker's certificate, no kid")
    # Payload.
    raw = {
        "payload-array": b"[1,2]",
        "payload-string": b'"sub"',
        "payload-null": b"null",
        "payload-invalid-json": b'{"iss":',
        "payload-duplicate-exp": jdump(c)[:-1] + b',"exp":%d}' % EXPIRED,
        "payload-duplicate-iss": jdump(c)[:-1] + b',"iss":"https://evil.test"}',
        "payload-invalid-utf8": jdump(c)[:-1] + b',"name":"\xc3\x28"}',
        "payload-empty": b"",
        "payload-nul-in-string": jdump(c)[:-1] + b',"name":"a\\u0000b"}',
    }
    for name, p in raw.items():
        bad(name, make({"alg": "HS256", "kid": "hs-256"}, p, "HS256", "hs-256.secret"),
            "malformed", "payload: " + name[8:].replace("-", " "))
    # Tampering.
    t = std("RS256", "rsa-1")
    h, p, s = t.split(".")
    h2 = b64u(jdump({"alg": "RS256", "typ": "JWT", "kid": "rsa-1", "x": 1}))
    bad("tampered-header", h2 + "." + p + "." + s, "signature", "a header field added")
    p2 = b64u(jdump(dict(json.loads(base64.urlsafe_b64decode(p + "==")), sub="admin")))
    bad("tampered-payload", h + "." + p2 + "." + s, "signature", "sub changed to admin")
    p3 = b64u(jdump(claims(exp=EXP + 86400)))
    bad("tampered-payload-exp", h + "." + p3 + "." + s, "signature", "exp pushed later")
    bad("tampered-signature", h + "." + p + "." + tamper_char(s, 10), "signature",
        "one signature character changed")
    te = std("ES256", "ec-256").split(".")
    bad("tampered-signature-es256", ".".join(te[:2] + [tamper_char(te[2], 5)]), "signature",
        "one ES256 signature character changed")
    te = std("EdDSA", "ed-1").split(".")
    bad("tampered-signature-eddsa", ".".join(te[:2] + [tamper_char(te[2], 5)]), "signature",
        "one EdDSA signature character changed")
    te = std("HS256", "hs-256").split(".")
    bad("tampered-signature-hs256", ".".join(te[:2] + [tamper_char(te[2], 0)]), "signature",
        "one HMAC character changed")
    # The last character of a 256-byte signature carries 4 unused bits: a different character
    # with the same value bits must still be refused (non-canonical base64url).
    last = s[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    v = alphabet.index(last)
    alt = alphabet[(v & ~0x0F) | ((v + 1) & 0x0F)] if len(s) % 4 == 2 else None
    assert alt is not None and alt != last
    bad("signature-noncanonical-base64", h + "." + p + "." + s[:-1] + alt, "malformed",
        "the signature's unused trailing bits are not zero")
    bad("signature-empty", ".".join(std("HS256", "hs-256").split(".")[:2]) + ".", "signature",
        "HS256 without a signature")
    bad("signature-wrong-hmac-secret", std("HS256", "hs-256", keyname="hs-512.secret"),
        "signature", "HS256 with another secret")
    bad("signature-attacker-hmac-no-kid",
        make({"alg": "HS256"}, c, sig=hmac.new(b"attacker-secret-attacker-secret!",
                                             b"x", hashlib.sha256).digest()),
        "signature", "HS256 with an unknown secret, no kid")
    bad("signature-attacker-rsa", std("RS256", "rsa-1", keyname="attacker-rsa"), "signature",
        "signed by another RSA key")
    bad("signature-attacker-ec", std("ES256", "ec-256", keyname="attacker-ec"), "signature",
        "signed by another EC key")
    other = std("RS256", "rsa-1", claims(sub="someone-else")).split(".")[2]
    bad("signature-from-other-token", h + "." + p + "." + other, "signature",
        "the signature of another valid token")
    sig = base64.urlsafe_b64decode(s + "==")
    bad("signature-truncated", h + "." + p + "." + b64u(sig[:128]), "signature",
        "half an RS256 signature")
    bad("signature-extended", h + "." + p + "." + b64u(sig + b"\x00"), "signature",
        "an RS256 signature with one more byte")
    bad("signature-zero-rs256", h + "." + p + "." + b64u(b"\x00" * 256), "signature",
        "an RS256 signature of zeros")
    si = (b64u(jdump({"alg": "ES256", "kid": "ec-256"})) + "." + b64u(jdump(c))).encode()
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from cryptography.hazmat.primitives.asymmetric import ec
    eck = load_pem_private_key(key("ec-256"), None)
    der = eck.sign(si, ec.ECDSA(hashes.SHA256()))
    bad("es256-der-signature", si.decode() + "." + b64u(der), "signature",
        "ES256 with a DER signature instead of r||s")
    raw_sig = sign("ES256", "ec-256", si)
    bad("es256-signature-63-bytes", si.decode() + "." + b64u(raw_sig[:63]), "signature",
        "ES256 signature one byte short")
    bad("es256-signature-65-bytes", si.decode() + "." + b64u(raw_sig + b"\x01"), "signature",
        "ES256 signature one byte long")
    bad("es256-signature-zero", si.decode() + "." + b64u(b"\x00" * 64), "signature",
        "ES256 with r = s = 0")
    bad("es256-signature-swapped", si.decode() + "." + b64u(raw_sig[32:] + raw_sig[:32]),
        "signature", "ES256 with r and s swapped")
    n256 = bytes.fromhex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551")
    bad("es256-signature-r-is-order", si.decode() + "." + b64u(n256 + raw_sig[32:]),
        "signature", "ES256 with r equal to the group order")
    si4 = (b64u(jdump({"alg": "ES384", "kid": "ec-384"})) + "." + b64u(jdump(c))).encode()
    bad("es384-signature-64-bytes", si4.decode() + "." + b64u(sign("ES384", "ec-384", si4)[:64]),
        "signature", "ES384 with an ES256-sized signature")
    sie = (b64u(jdump({"alg": "EdDSA", "kid": "ed-1"})) + "." + b64u(jdump(c))).encode()
    bad("eddsa-signature-63-bytes", sie.decode() + "." + b64u(sign("EdDSA", "ed-1", sie)[:63]),
        "signature", "EdDSA signature one byte short")
    sip = (b64u(jdump({"alg": "PS256", "kid": "rsa-pss"})) + "." + b64u(jdump(c))).encode()
    pk = load_pem_private_key(key("rsa-pss"), None)
    maxsalt = pk.sign(sip, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                       salt_length=padding.PSS.MAX_LENGTH), hashes.SHA256())
    bad("ps256-salt-max-length", sip.decode() + "." + b64u(maxsalt), "signature",
        "PS256 with the largest salt instead of the hash length")
    pkcs1 = pk.sign(sip, padding.PKCS1v15(), hashes.SHA256())
    bad("ps256-with-pkcs1-signature", sip.decode() + "." + b64u(pkcs1), "signature",
        "PS256 header over a PKCS#1 v1.5 signature")
    # Structure.
    t = std("HS256", "hs-256")
    h, p, s = t.split(".")
    bad("truncated-half", t[: len(t) // 2], "malformed", "cut in half")
    bad("truncated-signature", h + "." + p + "." + b64u(base64.urlsafe_b64decode(s + "=")[:-3]),
        "signature", "the last 3 bytes of the signature cut")
    bad("truncated-no-signature", h + "." + p, "malformed", "header and payload only")
    bad("truncated-header-only", h, "malformed", "the header only")
    bad("no-dots", h + p + s, "malformed", "the dots missing")
    bad("one-dot", h + "." + p + s, "malformed", "one dot missing")
    bad("extra-segment", t + "." + s, "malformed", "four segments")
    bad("extra-trailing-dot", t + ".", "malformed", "a trailing dot")
    bad("jwe-five-segments", h + "." + p + "." + s + "." + s + "." + s, "malformed",
        "five segments, like a JWE")
    bad("empty", "", "malformed", "an empty token")
    bad("only-dots", "..", "malformed", "two dots")
    bad("empty-header-segment", "." + p + "." + s, "malformed", "no header")
    bad("empty-payload-segment", h + ".." + s, "malformed", "no payload")
    bad("base64-standard-alphabet", h + "." + p + "." + s.replace("-", "+").replace("_", "/") +
        ("+/" if "-" not in s and "_" not in s else ""), "malformed",
        "+ and / instead of - and _")
    bad("base64-bad-character", h + "." + p[:10] + "*" + p[11:] + "." + s, "malformed",
        "a * in the payload")
    bad("base64-padding", h + "==." + p + "." + s, "malformed", "= padding in the header")
    bad("base64-padding-signature", h + "." + p + "." + s + "=", "malformed",
        "= padding in the signature")
    bad("base64-length-1-mod-4", h + "." + p + "." + s + "A" * ((1 - len(s)) % 4 or 4),
        "malformed", "a signature length that no byte string encodes to")
    bad("whitespace-inside", h + ". " + p + "." + s, "malformed", "a space inside")
    bad("bearer-prefix-inside", "Bearer " + t, "malformed", "the scheme inside the token")
    bad("percent-encoded-dots", h + "%2E" + p + "%2E" + s, "malformed", "dots percent-encoded")
    bad("oversized-9000-bytes", std("HS256", "hs-256", claims(pad="x" * 6700)), "too_big",
        "a valid token of more than 8 KiB")
    # Exactly one byte more than the largest good token.
    mx = [g for g in GOOD if g[0] == "size-8192-bytes"][0][1]
    hh, pp, ss = mx.split(".")
    bad("oversized-8193-bytes", hh + "." + pp + "." + ss + "A", "too_big",
        "8193 bytes (the 8192-byte good token and one more character)")


def make_https():
    c = claims(ISS_REMOTE)
    HTTPS.append(("remote-1", std("RS256", "remote-1", c), "kid remote-1 (in sets 1 and 2)"))
    HTTPS.append(("remote-2", std("RS256", "remote-2", claims(ISS_REMOTE)),
                  "kid remote-2 (in sets 2 and 3)"))
    HTTPS.append(("remote-unknown", std("RS256", "remote-9", claims(ISS_REMOTE),
                                        keyname="jwks-rsa-2"),
                  "kid remote-9, in no set: always refused (no_key), and wakes the refresher"))


# ---- Checks against independent implementations ------------------------------------------


def pub_for(issuer, kid, alg):
    if issuer == "files" or issuer in ("noexp", "restricted"):
        kn = FILES_KID[kid] if kid else {"RS256": "rsa-1", "ES256": "ec-256", "EdDSA": "ed-1",
                                         "HS256": "hs-256.secret", "ES384": "ec-384"}[alg]
    else:
        kn = JWKS_KID[kid]
    if kn.endswith(".secret"):
        return key(kn), jwk.JWK(kty="oct", k=b64u(key(kn)))
    pem = key(kn)
    k = jwk.JWK.from_pem(pem)
    return jwk.JWK.from_json(k.export_public()).export_to_pem(), k


def check_good(name, tok, issuer, alg):
    hdr = jwt.get_unverified_header(tok)
    pyjwt_key, jwc_key = pub_for(issuer, hdr.get("kid"), alg)
    iss = {"files": ISS_FILES, "jwks": ISS_JWKS, "noexp": ISS_NOEXP,
           "restricted": ISS_RESTRICTED}[issuer]
    opts = {"require": []}
    jwt.decode(tok, pyjwt_key, algorithms=[alg], audience=["polis-api", "polis-admin"],
               issuer=iss, options=opts)
    s = jws.JWS()
    s.deserialize(tok)
    s.verify(jwc_key, alg=alg)


# ---- Output --------------------------------------------------------------------------------


def write_token(path, tok):
    with open(os.path.join(HERE, path), "w") as f:
        f.write(tok)


def main():
    if "--fuzz-jwks" in sys.argv:
        doc = json.dumps(fuzz_jwks(), separators=(",", ":"))
        for i in range(0, len(doc), 72):
            print('    "%s"' % doc[i:i + 72].replace('"', '\\"'))
        return
    write_jwks()
    make_good()
    make_bad()
    make_https()
    for g in GOOD:
        check_good(g[0], g[1], g[2], g[3])
    names = [g[0] for g in GOOD] + [b[0] for b in BAD] + [h[0] for h in HTTPS]
    assert len(names) == len(set(names)), "duplicate token names"
    for d in ("tokens/good", "tokens/bad", "tokens/https"):
        shutil.rmtree(os.path.join(HERE, d), ignore_errors=True)
        os.makedirs(os.path.join(HERE, d))
    tokens = []
    for name, tok, issuer, alg, why in GOOD:
        path = "tokens/good/%s.jwt" % name
        write_token(path, tok)
        tokens.append({"file": path, "config": "main", "expect": "accept", "issuer": issuer,
                       "alg": alg, "why": why})
    for name, tok, reason, why in BAD:
        path = "tokens/bad/%s.jwt" % name
        write_token(path, tok)
        tokens.append({"file": path, "config": "main", "expect": "reject", "reason": reason,
                       "why": why})
    for name, tok, why in HTTPS:
        path = "tokens/https/%s.jwt" % name
        write_token(path, tok)
        if name == "remote-unknown":
            tokens.append({"file": path, "config": "https", "expect": "reject",
                           "reason": "no_key", "why": why})
        else:
            tokens.append({"file": path, "config": "https", "expect": "rotation",
                           "issuer": "remote", "alg": "RS256", "why": why})
    manifest = {
        "description": "JWT test corpus: every token file, the verifier configuration it is "
                       "for and the expected result. Paths are relative to this directory. "
                       "expect accept: verifies; reject: refused, reason being the verifier's "
                       "reason name; rotation: accepted only while the JWK set served over "
                       "HTTPS holds its kid. All tokens are printable ASCII, so each can be "
                       "sent as 'Authorization: Bearer <token>'.",
        "time": {"valid_from": NOW_MIN, "valid_until": NOW_MAX, "unit_test_now": UNIT_NOW,
                 "note": "judge the tokens at any now in [valid_from, valid_until]"},
        "reasons": ["malformed", "too_big", "alg", "typ", "crit", "header", "kid", "no_key",
                    "signature", "expired", "nbf", "iat", "issuer", "audience", "claims"],
        "configs": CONFIGS,
        "tokens": tokens,
    }
    write_json("manifest.json", manifest)
    # Fuzzer seeds: every token of the main configuration, and the JWK sets.
    shutil.rmtree(FUZZ_CORPUS, ignore_errors=True)
    os.makedirs(FUZZ_CORPUS)
    for name, tok, *_ in GOOD:
        write_token(os.path.join(FUZZ_CORPUS, "good-" + name), tok)
    for name, tok, *_ in BAD:
        write_token(os.path.join(FUZZ_CORPUS, "bad-" + name), tok)
    shutil.copy(os.path.join(HERE, "keys/jwks.json"), os.path.join(FUZZ_CORPUS, "jwks-file"))
    # "!" seeds: the fuzzer signs header and payload itself with the hs-256 secret.
    raw = {
        "raw-good": ({"alg": "HS256", "kid": "hs-256", "typ": "JWT"}, claims()),
        "raw-expired": ({"alg": "HS256"}, claims(exp=EXPIRED)),
        "raw-aud-array": ({"alg": "HS256", "kid": "hs-256"}, claims(aud=["x", "polis-admin"])),
        "raw-noexp": ({"alg": "HS256", "kid": "hs-256"}, claims(ISS_NOEXP, exp=DROP)),
        "raw-crit": ({"alg": "HS256", "crit": ["x"]}, claims()),
    }
    for name, (h, p) in raw.items():
        with open(os.path.join(FUZZ_CORPUS, name), "wb") as f:
            f.write(b"!" + jdump(h) + b"\n" + jdump(p))
    shutil.copy(os.path.join(HERE, "keys/remote-jwks-2.json"),
                os.path.join(FUZZ_CORPUS, "jwks-remote"))
    write_fuzz_regression()
    print("good %d, bad %d, https %d" % (len(GOOD), len(BAD), len(HTTPS)))


def write_fuzz_regression():
    """Edge cases the fuzzer must always run clean (fuzz/jwt/regression), deterministic."""
    d = os.path.join(ROOT, "fuzz", "jwt", "regression")
    os.makedirs(d, exist_ok=True)
    c = {"iss": ISS_FILES, "aud": AUD, "exp": EXP, "sub": "user-123"}
    cases = {}
    # ES256 r with its high bit set and s with leading zeros: both DER paddings.
    cases["es256-der-padding"] = make({"alg": "ES256", "kid": "ec-256"}, c,
                                      sig=b"\x80" + b"\x00" * 31 + b"\x00" * 31 + b"\x01")
    cases["es384-all-ff"] = make({"alg": "ES384", "kid": "ec-384"}, c, sig=b"\xff" * 96)
    # Headers of exactly 1024 and 1025 bytes.
    for size in (1024, 1025):
        h = {"alg": "HS256", "kid": "hs-256", "x": ""}
        h["x"] = "y" * (size - len(jdump(h)))
        assert len(jdump(h)) == size
        cases["header-%d-bytes" % size] = make(h, c, sig=b"\x00" * 32)
    # A signature of 1024 bytes (the largest decoded) and 1025.
    cases["signature-1024-bytes"] = make({"alg": "RS256", "kid": "rsa-1"}, c, sig=b"\x01" * 1024)
    cases["signature-1025-bytes"] = make({"alg": "RS256", "kid": "rsa-1"}, c, sig=b"\x01" * 1025)
    cases["payload-deep-nesting"] = make({"alg": "HS256"}, b"[" * 3000 + b"]" * 3000,
                                         sig=b"\x00" * 32)
    cases["kid-256-bytes"] = make({"alg": "HS256", "kid": "k" * 256}, c, sig=b"\x00" * 32)
    cases["kid-257-bytes"] = make({"alg": "HS256", "kid": "k" * 257}, c, sig=b"\x00" * 32)
    cases["jwks-rsa-e-9-bytes"] = jdump({"keys": [{"kty": "RSA", "n": b64u(b"\xc1" * 256),
                                                  "e": b64u(b"\x01" * 9)}]}).decode()
    cases["jwks-rsa-even-modulus"] = jdump({"keys": [{"kty": "RSA", "n": b64u(b"\xc2" * 256),
                                                     "e": "AQAB"}]}).decode()
    cases["jwks-ec-short-x"] = jdump({"keys": [{"kty": "EC", "crv": "P-256", "x": b64u(b"\x01"),
                                               "y": b64u(b"\x01" * 32)}]}).decode()
    cases["jwks-key-ops-not-array"] = jdump({"keys": [{"kty": "oct", "k": b64u(b"\x01" * 32),
                                                      "key_ops": "verify"}]}).decode()
    cases["raw-nul-member"] = '!{"alg":"HS256","kid":"hs-256"}\n{"iss\\u0000":1}'
    cases["raw-huge-numbers"] = ('!{"alg":"HS256"}\n{"iss":"%s","exp":1e308,"nbf":-1e308,'
                                 '"iat":123456789012345678901234567890}' % ISS_FILES)
    for name, data in cases.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(data)


if __name__ == "__main__":
    main()
