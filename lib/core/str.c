/* str.c: string views and error descriptions. */
#include <polis/core.h>

#include <string.h>

bool polis_str_eq(struct polis_str a, struct polis_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

bool polis_str_caseeq(struct polis_str a, struct polis_str b)
{
    if (a.len != b.len)
        return false;
    for (size_t i = 0; i < a.len; i++) {
        unsigned char x = (unsigned char)a.p[i], y = (unsigned char)b.p[i];
        if (x != y && (x | 0x20) != (y | 0x20))
            return false;
        if (x != y && !((x | 0x20) >= 'a' && (x | 0x20) <= 'z'))
            return false;
    }
    return true;
}

const char *polis_strerror(int err)
{
    switch (err) {
    case POLIS_OK:
        return "success";
    case POLIS_EAGAIN:
        return "try again";
    case POLIS_ENOMEM:
        return "out of memory";
    case POLIS_EINVAL:
        return "invalid argument";
    case POLIS_EBADMSG:
        return "malformed message";
    case POLIS_ETOOBIG:
        return "limit exceeded";
    case POLIS_EURITOOLONG:
        return "request line too long";
    case POLIS_EHDRTOOBIG:
        return "header section too large";
    case POLIS_EBODYTOOBIG:
        return "body too large";
    case POLIS_EVERSION:
        return "HTTP version not supported";
    case POLIS_ECLOSED:
        return "connection closed";
    case POLIS_ETIMEDOUT:
        return "timed out";
    case POLIS_ESYS:
        return "system call failed";
    case POLIS_ENOTFOUND:
        return "not found";
    case POLIS_ENOTIMPL:
        return "not implemented";
    }
    return "unknown error";
}
