#ifndef BULKHEAD_CDIGEST_H
#define BULKHEAD_CDIGEST_H
// SHA-256 from the system's libcrypto (OpenSSL), for the partition's measured launch: the VMM
// links no Foundation (which swift-crypto imports), and the kernels of our hosts have no AF_ALG.
#include <stddef.h>
#include <stdint.h>

/// Writes the SHA-256 digest of `length` bytes at `data` into `digest` (32 bytes).
/// Returns 0, or -1 when libcrypto failed.
int bh_sha256(const void *data, size_t length, uint8_t digest[32]);
#endif
