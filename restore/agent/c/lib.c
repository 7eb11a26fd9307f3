// SPDX-License-Identifier: Apache-2.0
/*
 * lib.c - the few libc functions gcc may call on its own (struct copies and
 * zeroing). Built with -fno-tree-loop-distribute-patterns so that these
 * loops are not turned back into calls to themselves.
 */
#include "agent.h"

void *memset(void *s, int c, size_t n)
{
	unsigned char *p = s;

	while (n--)
		*p++ = (unsigned char)c;
	return s;
}

void *memcpy(void *dst, const void *src, size_t n)
{
	unsigned char *d = dst;
	const unsigned char *s = src;

	while (n--)
		*d++ = *s++;
	return dst;
}
