// SPDX-License-Identifier: Apache-2.0
/*
 * creds.c - a thread's credentials, in CRIU's order (restore_creds): the
 * agent runs as root with every capability the engine had, so it sets the
 * groups, keeps its capabilities across the uid change with
 * SECBIT_NO_SETUID_FIXUP, sets the ids, the real securebits, trims the
 * bounding set, then sets the capability sets and the ambient ones.
 * Credentials are per thread in the kernel: every thread does this.
 */
#include "agent.h"
#include <linux/capability.h>
#include <linux/prctl.h>
#include <linux/securebits.h>

#define CAP_LAST 63

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

static int restore_caps(const struct crest_creds *c)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];
	long ret;
	int i;

	for (i = 0; i <= CAP_LAST; i++) {
		if (c->cap_bnd & (1ull << i))
			continue;
		ret = sys_prctl(PR_CAPBSET_DROP, (unsigned long)i, 0, 0, 0);
		if (ret == -EINVAL)	/* no such capability here, nor any above */
			break;
		if (ret < 0)
			return (int)ret;
	}
	for (i = 0; i < 2; i++) {
		data[i].effective = (uint32_t)(c->cap_eff >> (32 * i));
		data[i].permitted = (uint32_t)(c->cap_prm >> (32 * i));
		data[i].inheritable = (uint32_t)(c->cap_inh >> (32 * i));
	}
	ret = sys_call2(__NR_capset, (long)&hdr, (long)data);
	if (ret < 0)
		return (int)ret;
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
	long ret;

	step_begin_slot(slot, CREST_STEP_CREDS);
	ret = sys_setgroups((int)t->nr_groups, plan_ptr(t->groups_off));
	if (ret == 0)
		ret = restore_ids(c);
	if (ret == 0)
		ret = restore_caps(c);
	if (ret == 0 && c->no_new_privs)
		ret = sys_prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
	if (ret == 0 && c->dumpable >= 0)
		ret = sys_prctl(PR_SET_DUMPABLE, (unsigned long)c->dumpable, 0, 0, 0);
	if (ret < 0)
		return (int)ret;
	step_end_slot(slot, CREST_STEP_CREDS);
	return 0;
}
