// The low-level SHA256_* functions, deprecated since OpenSSL 3.0 in favour of EVP, on purpose:
// EVP's first digest spends about 0.9 ms setting up its providers (measured on a 35 KB image:
// EVP_Digest 0.85-1.1 ms, SHA256_Init/Update/Final 0.04 ms), a fifth of a partition's start-up
// budget. Both compute the same digest with the same code underneath.
#define OPENSSL_SUPPRESS_DEPRECATED
#include "CDigest.h"
#include <openssl/sha.h>

int bh_sha256(const void *data, size_t length, uint8_t digest[32]) {
    SHA256_CTX context;
    if (SHA256_Init(&context) != 1) return -1;
    if (SHA256_Update(&context, data, length) != 1) return -1;
    return SHA256_Final(digest, &context) == 1 ? 0 : -1;
}
