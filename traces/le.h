/* Little-endian integers at a byte pointer, as FUSE puts them on the wire (the host's own
 * order on x86_64 and aarch64); memcpy keeps unaligned reads legal. Shared by the C loops
 * (`traces/_scan.c`, `inspector/lifecycles/_pass.c`, `inspector/record/_fastpath.c`). */
#ifndef FUSETRACE_LE_H
#define FUSETRACE_LE_H
#include <stdint.h>
#include <string.h>

static inline uint32_t get_u32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint64_t get_u64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
#endif
