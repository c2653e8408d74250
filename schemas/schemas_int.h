/* schemas_int: helpers shared by the files of schemas/ and nobody else.
 * Pure functions over caller buffers; thread-safe; own nothing. */
#ifndef ER_SCHEMAS_SCHEMAS_INT_H
#define ER_SCHEMAS_SCHEMAS_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* Length (1 to 4) of the well-formed UTF-8 sequence at the start of the
 * len bytes at s (RFC 3629: no overlong forms, no surrogates, nothing above
 * U+10FFFF; NUL counts as a character); 0 when it is malformed or cut short
 * (validate.c). */
size_t er_validate__utf8_seq(const char *s, size_t len);
/* True when all len bytes at s are well-formed UTF-8 (validate.c). */
bool er_validate__utf8(const char *s, size_t len);

/* Append the len bytes at s to out as a quoted JSON string. Quotes,
 * backslashes and control characters are escaped; well-formed UTF-8 is
 * copied as is and every byte of a malformed sequence becomes U+FFFD, so
 * the output is valid JSON whatever the input (canonical.c). Returns 0,
 * ER_E2BIG or ER_ENOMEM. */
int er_canonical__json_str(struct er_buf *out, const char *s, size_t len);

/* The 8 bytes at p as a little-endian number (a single-object header's
 * fingerprint). */
uint64_t er_codec__load_le64(const uint8_t *p);

#endif
