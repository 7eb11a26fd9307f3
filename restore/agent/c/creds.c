// SPDX-License-Identifier: Apache-2.0
/*
 * creds.c - a thread's credentials, in CRIU's order (restore_creds): the
 * agent runs as root with every capability the engine had, so it sets the
 * groups, keeps its capabilities across the uid change with
 * SECBIT_NO_SETUID_FIXUP, sets the ids, the real securebits, trims the
 * bounding set, then sets the capability sets and the ambient ones.
 * Credentials are per thread in the kernel: every thread does this.
 *
 * Most images hold the credentials the agent already has (root dumped,
 * root restores), so each part equal to what the thread has is skipped.
 * What the thread has is the launcher's, read once before it reports ready
 * (snapshot_creds): every task is forked from the launcher, every thread
 * cloned from its task's leader, and nothing before this step changes
 * credentials, so each thread arrives here with exactly the launcher's.
 */
#include "agent.h"
#include <linux/capability.h>
#include <linux/prctl.h>
#include <linux/securebits.h>

#define CAP_LAST 63
#define AT_FDCWD -100
#define O_RDONLY 0
/* more groups and there is no snapshot: rare, and the bss is copied in every task */
#define SNAPSHOT_GROUPS 32

/*
 * The launcher's credentials. Static storage: forked tasks inherit it, and
 * it is part of the image the restorer copies (mem.c), which happens long
 * after the launcher wrote it. valid is 0 when reading any part failed:
 * then every thread does the whole step.
 */
static struct {
	int valid;
	uint32_t nr_groups;
	uint32_t groups[SNAPSHOT_GROUPS];
	struct crest_creds creds;
} launcher;

static int parse_hex64(const char *s, const char *end, uint64_t *v)
{
	int n;

	*v = 0;
	for (n = 0; s < end && n < 16; s++, n++) {
		char ch = *s;

		if (ch >= '0' && ch <= '9')
			*v = *v << 4 | (uint64_t)(ch - '0');
		else if (ch >= 'a' && ch <= 'f')
			*v = *v << 4 | (uint64_t)(ch - 'a' + 10);
		else
			break;
	}
	return n == 16 ? 0 : -EINVAL;
}

/* The value of the line "name\t<16 hex digits>" of a /proc status file. */
static int status_hex(const char *buf, const char *end, const char *name, uint64_t *v)
{
	const char *s;
	size_t len = 0;

	while (name[len])
		len++;
	for (s = buf; s + len < end; s++) {
		size_t i;

		if (s != buf && s[-1] != '\n')
			continue;
		for (i = 0; i < len && s[i] == name[i]; i++)
			;
		if (i == len)
			return parse_hex64(s + len, end, v);
	}
	return -ENOENT;
}

/*
 * The bounding and ambient sets: no single call reads either, where
 * /proc/self/status has both (the launcher sees the host's /proc).
 */
static int read_cap_sets(uint64_t *bnd, uint64_t *amb)
{
	char buf[4096];
	size_t len = 0;
	long fd, n;
	int ret;

	fd = sys_call4(__NR_openat, AT_FDCWD, (long)"/proc/self/status", O_RDONLY | O_CLOEXEC, 0);
	if (fd < 0)
		return (int)fd;
	do {
		n = sys_call3(__NR_read, fd, (long)(buf + len), (long)(sizeof(buf) - len));
		if (n > 0)
			len += (size_t)n;
	} while (n > 0 && len < sizeof(buf));
	sys_close((int)fd);
	if (n < 0)
		return (int)n;
	ret = status_hex(buf, buf + len, "CapBnd:\t", bnd);
	if (ret == 0)
		ret = status_hex(buf, buf + len, "CapAmb:\t", amb);
	return ret;
}

/* Called by the launcher before it reports ready: outside the timed stages. */
void snapshot_creds(void)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];
	struct crest_creds *c = &launcher.creds;
	long ret;

	launcher.valid = 0;
	ret = sys_call2(__NR_getgroups, SNAPSHOT_GROUPS, (long)launcher.groups);
	if (ret < 0)	/* EINVAL: more than SNAPSHOT_GROUPS */
		return;
	launcher.nr_groups = (uint32_t)ret;
	if (sys_call3(__NR_getresuid, (long)&c->uid, (long)&c->euid, (long)&c->suid) < 0 ||
	    sys_call3(__NR_getresgid, (long)&c->gid, (long)&c->egid, (long)&c->sgid) < 0)
		return;
	/* -1 is no valid id: the call changes nothing and returns the current one */
	c->fsuid = (uint32_t)sys_call1(__NR_setfsuid, -1);
	c->fsgid = (uint32_t)sys_call1(__NR_setfsgid, -1);
	ret = sys_prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
	if (ret < 0)
		return;
	c->secbits = (uint32_t)ret;
	ret = sys_prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
	if (ret < 0)
		return;
	c->no_new_privs = (uint32_t)ret;
	ret = sys_prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
	if (ret < 0)
		return;
	c->dumpable = (int32_t)ret;
	if (sys_call2(__NR_capget, (long)&hdr, (long)data) < 0)
		return;
	c->cap_eff = data[0].effective | (uint64_t)data[1].effective << 32;
	c->cap_prm = data[0].permitted | (uint64_t)data[1].permitted << 32;
	c->cap_inh = data[0].inheritable | (uint64_t)data[1].inheritable << 32;
	if (read_cap_sets(&c->cap_bnd, &c->cap_amb) < 0)
		return;
	launcher.valid = 1;
}

static int same_groups(const struct crest_task *t)
{
	const uint32_t *g = plan_ptr(t->groups_off);
	uint32_t i;

	if (t->nr_groups != launcher.nr_groups)
		return 0;
	for (i = 0; i < t->nr_groups; i++) {
		if (g[i] != launcher.groups[i])
			return 0;
	}
	return 1;
}

static int same_ids(const struct crest_creds *c, const struct crest_creds *have)
{
	return c->uid == have->uid && c->euid == have->euid && c->suid == have->suid &&
	       c->fsuid == have->fsuid && c->gid == have->gid && c->egid == have->egid &&
	       c->sgid == have->sgid && c->fsgid == have->fsgid && c->secbits == have->secbits;
}

static int restore_ids(const struct crest_creds *c)
{
	long ret;

	ret = sys_prctl(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0);
	if (ret == 0)
		ret = sys_call3(__NR_setresgid, c->gid, c->egid, c->sgid);
	if (ret == 0)
		ret = sys_call1(__NR_setfsgid, c->fsgid) < 0 ? -EPERM : 0;
	if (ret == 0)
		ret = sys_call3(__NR_setresuid, c->uid, c->euid, c->suid);
	if (ret == 0)
		ret = sys_call1(__NR_setfsuid, c->fsuid) < 0 ? -EPERM : 0;
	if (ret == 0)
		ret = sys_prctl(PR_SET_SECUREBITS, c->secbits, 0, 0, 0);
	return (int)ret;
}

/*
 * have is what the thread has, or NULL when unknown. The ids came before
 * with SECBIT_NO_SETUID_FIXUP, which keeps every capability set as it
 * was: have's sets are still the thread's here.
 */
static int restore_caps(const struct crest_creds *c, const struct crest_creds *have)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];
	/* a bounding set only shrinks: drop what the thread has and the image lacks */
	uint64_t drop = have ? have->cap_bnd & ~c->cap_bnd : ~c->cap_bnd;
	uint64_t amb = have ? have->cap_amb : 0;
	long ret;
	int i;

	for (i = 0; i <= CAP_LAST; i++) {
		if (!(drop & (1ull << i)))
			continue;
		ret = sys_prctl(PR_CAPBSET_DROP, (unsigned long)i, 0, 0, 0);
		if (ret == -EINVAL)	/* no such capability here, nor any above */
			break;
		if (ret < 0)
			return (int)ret;
	}
	if (!have || c->cap_eff != have->cap_eff || c->cap_prm != have->cap_prm ||
	    c->cap_inh != have->cap_inh) {
		for (i = 0; i < 2; i++) {
			data[i].effective = (uint32_t)(c->cap_eff >> (32 * i));
			data[i].permitted = (uint32_t)(c->cap_prm >> (32 * i));
			data[i].inheritable = (uint32_t)(c->cap_inh >> (32 * i));
		}
		ret = sys_call2(__NR_capset, (long)&hdr, (long)data);
		if (ret < 0)
			return (int)ret;
		/* the kernel keeps only the ambient caps still permitted and inheritable */
		amb &= c->cap_prm & c->cap_inh;
	}
	if (have && amb == c->cap_amb)
		return 0;
	ret = sys_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
	for (i = 0; ret == 0 && i <= CAP_LAST; i++) {
		if (c->cap_amb & (1ull << i))
			ret = sys_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, (unsigned long)i, 0, 0);
	}
	return (int)ret;
}

int restore_creds(struct crest_slot *slot, const struct crest_task *t)
{
	const struct crest_creds *c = plan_ptr(t->creds_off);
	const struct crest_creds *have = launcher.valid ? &launcher.creds : NULL;
	int ids = !have || !same_ids(c, have);
	long ret = 0;

	step_begin_slot(slot, CREST_STEP_CREDS);
	if (!have || !same_groups(t))
		ret = sys_setgroups((int)t->nr_groups, plan_ptr(t->groups_off));
	if (ret == 0 && ids)
		ret = restore_ids(c);
	if (ret == 0)
		ret = restore_caps(c, have);
	if (ret == 0 && c->no_new_privs && !(have && have->no_new_privs))
		ret = sys_prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
	/*
	 * A new euid, egid, fsuid or fsgid resets the mm's dumpable flag, in
	 * whichever thread of the task changes it: after its own ids, every
	 * thread sets it again. Without, it is the launcher's (fork copies it).
	 */
	if (ret == 0 && c->dumpable >= 0 && (ids || c->dumpable != have->dumpable))
		ret = sys_prctl(PR_SET_DUMPABLE, (unsigned long)c->dumpable, 0, 0, 0);
	if (ret < 0)
		return (int)ret;
	step_end_slot(slot, CREST_STEP_CREDS);
	return 0;
}
