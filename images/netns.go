package images

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// The raw images of a net namespace (criu/net.c dump_net_ns). Besides
// netns-ID.img (sysctls) and netdev-ID.img (devices), CRIU keeps what
// tools print, as they print it, with no magic of its own
// (RAW_IMAGE_MAGIC):
//
//	ifaddr-ID.img     ip addr save: iproute2's magic, then the kernel's RTM_NEWADDR dump
//	route-ID.img      ip route save: the IPv4 routes of the main table (RTM_NEWROUTE)
//	route6-ID.img     ip -6 route save: the IPv6 ones
//	rule-ID.img       ip rule save: the IPv4 rules (RTM_NEWRULE)
//	iptables-ID.img   iptables-legacy-save (or iptables-save of a legacy iptables), text
//	ip6tables-ID.img  the same for IPv6
//	nftables-ID.img   libnftables' "list ruleset", text
//	netns-ct-ID.img   conntrack entries: netlink messages, no magic (only when there are some)
//	netns-exp-ID.img  conntrack expectations, the same
//
// An ip save dump is iproute2's u32 magic for its kind, then netlink
// messages as the kernel sent them (each nlmsg_len bytes, 4-byte aligned),
// which ip ... restore sends back.

// Magics iproute2 starts its save dumps with (ipadd_dump_magic,
// route_dump_magic, rule_dump_magic).
const (
	IPDumpAddrMagic  uint32 = 0x47361222
	IPDumpRouteMagic uint32 = 0x45311224
	IPDumpRuleMagic  uint32 = 0x71706986
)

// ipDumpMaxMsg is the largest message ip ... restore takes (the buffer of
// rtnl_from_file).
const ipDumpMaxMsg = 16384

// NetlinkMessage is one message of a raw netlink dump.
type NetlinkMessage struct {
	Offset int64 // of its header in the file
	Type   uint16
	Flags  uint16
	Raw    []byte // the whole message, header included (nlmsg_len bytes)
}

// Payload is the message past its 16-byte header.
func (m *NetlinkMessage) Payload() []byte { return m.Raw[16:] }

// ParseIPDump parses the content b of an ip ... save image named file,
// which must start with magic.
func ParseIPDump(file string, b []byte, magic uint32) ([]NetlinkMessage, error) {
	if len(b) < 4 {
		return nil, &FormatError{File: file, Offset: 0, Entry: -1, Msg: fmt.Sprintf("%d bytes: no iproute2 magic", len(b))}
	}
	if got := binary.LittleEndian.Uint32(b); got != magic {
		return nil, &FormatError{File: file, Offset: 0, Entry: -1, Msg: fmt.Sprintf("magic %#x, want iproute2's %#x", got, magic)}
	}
	return parseNetlink(file, b[4:], 4)
}

// ParseNetlinkDump parses raw netlink messages with no magic before them
// (netns-ct-ID.img, netns-exp-ID.img).
func ParseNetlinkDump(file string, b []byte) ([]NetlinkMessage, error) {
	return parseNetlink(file, b, 0)
}

func parseNetlink(file string, b []byte, base int64) ([]NetlinkMessage, error) {
	var out []NetlinkMessage
	for off := 0; off < len(b); {
		at := base + int64(off)
		fail := func(format string, args ...any) error {
			return &FormatError{File: file, Offset: at, Entry: len(out), Msg: fmt.Sprintf(format, args...)}
		}
		if len(b)-off < 16 {
			return nil, fail("%d bytes left: a netlink header needs 16", len(b)-off)
		}
		n := int(binary.NativeEndian.Uint32(b[off:]))
		if n < 16 || n > ipDumpMaxMsg {
			return nil, fail("nlmsg_len %d, not in 16..%d", n, ipDumpMaxMsg)
		}
		aligned := (n + 3) &^ 3
		if aligned > len(b)-off {
			return nil, fail("message of %d bytes runs past the end of the file", n)
		}
		out = append(out, NetlinkMessage{Offset: at, Type: binary.NativeEndian.Uint16(b[off+4:]),
			Flags: binary.NativeEndian.Uint16(b[off+6:]), Raw: b[off : off+n : off+n]})
		off += aligned
	}
	return out, nil
}

// ReadRaw reads the raw image at path; ok is false for a missing one,
// which CRIU takes as empty (it writes none where there was nothing, as
// for conntrack).
func ReadRaw(path string) (b []byte, ok bool, err error) {
	b, err = os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	return b, err == nil, err
}

// The sysctls of netns-ID.img and netdev-ID.img, by their index in the
// repeated fields (criu/net.c devconfs4, devconfs6, unix_conf_entries,
// ipv4_sysctl_entries): the image keeps values only, in this order.
// NetConf4Names and NetConf6Names are the files of net/ipv4/conf/DEV/ and
// net/ipv6/conf/DEV/ for DEV all, default and each device; stable_secret
// is the one string among them (CTL_STR), every other one an int (CTL_32).
var (
	NetConf4Names = []string{
		"accept_local", "accept_redirects", "accept_source_route", "arp_accept", "arp_announce",
		"arp_filter", "arp_ignore", "arp_notify", "bootp_relay", "disable_policy", "disable_xfrm",
		"force_igmp_version", "forwarding", "igmpv2_unsolicited_report_interval",
		"igmpv3_unsolicited_report_interval", "log_martians", "medium_id", "promote_secondaries",
		"proxy_arp", "proxy_arp_pvlan", "route_localnet", "rp_filter", "secure_redirects",
		"send_redirects", "shared_media", "src_valid_mark", "tag", "ignore_routes_with_linkdown",
		"drop_gratuitous_arp", "drop_unicast_in_l2_multicast",
	}
	NetConf6Names = []string{
		"accept_dad", "accept_ra", "accept_ra_defrtr", "accept_ra_from_local", "accept_ra_min_hop_limit",
		"accept_ra_mtu", "accept_ra_pinfo", "accept_ra_rt_info_max_plen", "accept_ra_rtr_pref",
		"accept_redirects", "accept_source_route", "autoconf", "dad_transmits", "disable_ipv6",
		"drop_unicast_in_l2_multicast", "drop_unsolicited_na", "force_mld_version", "force_tllao",
		"forwarding", "hop_limit", "ignore_routes_with_linkdown", "keep_addr_on_down", "max_addresses",
		"max_desync_factor", "mldv1_unsolicited_report_interval", "mldv2_unsolicited_report_interval",
		"mtu", "ndisc_notify", "optimistic_dad", "proxy_ndp", "regen_max_retry", "router_probe_interval",
		"router_solicitation_delay", "router_solicitation_interval", "router_solicitations",
		"stable_secret", "suppress_frag_ndisc", "temp_prefered_lft", "temp_valid_lft",
		"use_oif_addrs_only", "use_optimistic", "use_tempaddr",
	}
	// NetUnixConfNames are the files of net/unix/ (netns_entry.unix_conf).
	NetUnixConfNames = []string{"max_dgram_qlen"}
	// NetIPv4SysctlNames are the files of net/ipv4/ (netns_entry.ipv4_sysctl),
	// strings.
	NetIPv4SysctlNames = []string{"ping_group_range"}
)
