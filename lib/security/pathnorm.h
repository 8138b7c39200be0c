/* pathnorm.h: one canonical spelling of a request path, computed before route matching and
 * authentication and sent upstream as is, so that no spelling of a protected path avoids its
 * route. The policy is written down in docs/security.md, "Path normalisation". */
#ifndef POLIS_SECURITY_PATHNORM_H
#define POLIS_SECURITY_PATHNORM_H

#include <polis/core.h>

/* Why a path was refused (every one is a 400). */
enum polis_path_reason {
    POLIS_PATH_OK = 0,
    POLIS_PATH_NOT_ABSOLUTE,      /* empty, or does not start with '/' */
    POLIS_PATH_BAD_ESCAPE,        /* '%' not followed by two hex digits */
    POLIS_PATH_ENCODED_SLASH,     /* %2F */
    POLIS_PATH_BACKSLASH,         /* a raw '\' */
    POLIS_PATH_ENCODED_BACKSLASH, /* %5C */
    POLIS_PATH_NUL,               /* %00 */
    POLIS_PATH_CONTROL,           /* a control character (0x01-0x1F, 0x7F), raw or encoded */
    POLIS_PATH_BAD_CHAR,          /* a raw space, '?' or '#' (the caller must split the query) */
    POLIS_PATH_BAD_UTF8,          /* bytes >= 0x80 (raw or encoded) that are not valid UTF-8:
                                     overlong forms, surrogates, above U+10FFFF, truncated */
    POLIS_PATH_PARAMS,            /* a raw ';' (path parameters), unless POLIS_PATH_STRIP_PARAMS */
    POLIS_PATH_ABOVE_ROOT,        /* a ".." segment would climb above "/" */
    POLIS_PATH_TOO_LONG,          /* the output does not fit in the caller's buffer */
    POLIS_PATH__COUNT
};

/* Flags for polis__path_normalize(). */
enum {
    /* Remove path parameters instead of refusing them: from a raw ';' to the end of its
     * segment ("/admin;jsessionid=1/x" becomes "/admin/x", "/..;/x" is "/../x"). */
    POLIS_PATH_STRIP_PARAMS = 1u << 0,
};

/* Normalise path (the path of an origin-form request target, the query already cut off at the
 * first '?'). Steps, in one pass: percent-escapes are checked and decoded; every byte is then
 * written in its one canonical form: unreserved characters, sub-delims other than ';', ':' and
 * '@' as themselves ("%41" -> "A", "%2e" -> ".", "%21" -> "!"); everything else that may appear
 * in a segment as an escape with uppercase hex ("%7c" and "|" -> "%7C", "%c3%a9" -> "%C3%A9",
 * "%25" stays "%25", so "%252e" is the segment text "%2e", never "."); empty segments are
 * dropped ("//" -> "/"); "." segments are removed and ".." removes the segment before it, after
 * decoding ("/a/%2e%2e/b" -> "/b"); a trailing "/", "/." or "/.." leaves a trailing '/'. Case is
 * kept: paths are case-sensitive. Refused (the reason in *reason): see enum polis_path_reason.
 *
 * The result starts with '/', holds no "//", no "." or ".." segment, no raw ';', '\', control or
 * non-ASCII byte, and normalising it again gives the same bytes. It is what routing and
 * authentication see and what is sent upstream.
 *
 * Writes into out (cap bytes; 3 * path.len + 1 is always enough; not NUL-terminated) and sets
 * *out_len; the buffer also holds the work in progress, so a smaller cap may fail even when the
 * result would fit. out must not overlap path. Returns 0 (*reason = POLIS_PATH_OK), POLIS_EBADMSG
 * (400: *reason says why) or POLIS_ETOOBIG (*reason = POLIS_PATH_TOO_LONG). Pure; any thread. */
int polis__path_normalize(struct polis_str path, unsigned flags, char *out, size_t cap,
                          size_t *out_len, enum polis_path_reason *reason);

/* A short name for a reason: "ok", "not_absolute", "bad_escape", "encoded_slash", "backslash",
 * "encoded_backslash", "nul", "control", "bad_char", "bad_utf8", "params", "above_root",
 * "too_long"; "unknown" otherwise. Used in logs and in tests/data/paths/spellings.txt. */
const char *polis__path_reason_name(enum polis_path_reason r);

#endif
