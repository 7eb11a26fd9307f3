package dump

import (
	"encoding/binary"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/netdev"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/nlattr"
)

// A veth end in the tree's net namespace, dumped as CRIU 4.2's
// dump_one_netdev writes one (criu/net.c, ND_TYPE__VETH): its name,
// ifindex, mtu, flags, link-layer address, its peer's ifindex (IFLA_LINK)
// and, when the peer is in a namespace of the dump, that namespace's id
// (peer_nsid), its master if any, and its ipv4 and ipv6 sysctls. Its
// addresses and routes are in the ip save dumps with the others
// (ifaddr-, route-ID.img), which name it by its ifindex.
//
// Its peer is expected outside the tree, in the dumper's namespace or
// another (a container's veth): the kernel names that namespace to this
// one by an nsid (IFLA_LINK_NETNSID), which names none of the dump's
// namespaces, so peer_nsid is left out, as CRIU does after its warning
// "The ... veth is in an external netns". The restore makes the pair
// again with the outside end where its user says (criu restore
// --veth-pair IN=OUT[@BRIDGE]). Refused: a veth whose peer is in the
// tree's namespace too (crest dumps one namespace, and restores pairs
// with one end outside only), and one enslaved to a master (a bridge or
// bond in the namespace, which would be refused by its kind anyway).

// isVeth says whether the link message attributes a are a veth's.
func isVeth(a map[uint16][]byte) bool { return linkKind(a) == "veth" }

// linkKind is the IFLA_INFO_KIND of link attributes a, "" for none.
func linkKind(a map[uint16][]byte) string {
	li, ok := a[unix.IFLA_LINKINFO]
	if !ok {
		return ""
	}
	return strings.TrimRight(string(nlattr.Parse(li)[unix.IFLA_INFO_KIND]), "\x00")
}

// vethDevice is the NetDeviceEntry of the veth end of ifindex index (with
// flags and link attributes a) in the tree's net namespace, as CRIU
// writes it; file is netdev-ID.img, for errors.
func (d *dumper) vethDevice(file string, index, flags uint32, a map[uint16][]byte) (*netdev.NetDeviceEntry, error) {
	name := strings.TrimRight(string(a[unix.IFLA_IFNAME]), "\x00")
	if len(a[unix.IFLA_MTU]) < 4 || name == "" {
		return nil, fmt.Errorf("%s: veth %d: no name or mtu", file, index)
	}
	e := &netdev.NetDeviceEntry{Type: netdev.NdType_VETH.Enum(), Ifindex: proto.Uint32(index),
		Mtu: proto.Uint32(binary.NativeEndian.Uint32(a[unix.IFLA_MTU])), Flags: proto.Uint32(flags), Name: proto.String(name)}
	refuse := func(why string) error {
		return &UnsupportedError{Task: int(d.tree.root.nsPid), Resource: "net device",
			Why: fmt.Sprintf("device %q (ifindex %d) of kind veth in the tree's net namespace: %s", name, index, why)}
	}
	peer := index
	if l := a[unix.IFLA_LINK]; len(l) >= 4 {
		peer = binary.NativeEndian.Uint32(l)
	}
	e.PeerIfindex = proto.Uint32(peer)
	if _, outside := a[unix.IFLA_LINK_NETNSID]; !outside {
		// no nsid: the peer is in this namespace too
		return nil, refuse(fmt.Sprintf("its peer (ifindex %d) is there too: only veths with their peer outside the tree are dumped", peer))
	}
	if m := a[unix.IFLA_MASTER]; len(m) >= 4 {
		return nil, refuse(fmt.Sprintf("it is enslaved to device %d of the namespace: not dumped", binary.NativeEndian.Uint32(m)))
	}
	if ll := a[unix.IFLA_ADDRESS]; len(ll) > 0 {
		e.Address = append([]byte(nil), ll...)
	}
	var err error
	if e.Conf4, err = readConf("ipv4", name, images.NetConf4Names); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if e.Conf6, err = readConf("ipv6", name, images.NetConf6Names); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	d.log.Debug("veth with its peer outside the tree", "image", file, "name", name, "ifindex", index, "peer_ifindex", peer)
	return e, nil
}
