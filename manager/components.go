package manager

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/managerv1"
	"github.com/damselfly-io/damselfly/internal/identity"
)

func bcryptHash(p string) (string, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(p), bcryptCost)
	return string(h), err
}

// componentKind is a scheduler or a seed peer: same columns, own table.
type componentKind struct {
	table, path string
}

var (
	kindScheduler = componentKind{"schedulers", "schedulers"}
	kindSeedPeer  = componentKind{"seed_peers", "seed-peers"}
)

// Component is a registered scheduler or seed peer. State is "active" while
// its keepalives arrive, else "inactive".
type Component struct {
	ID            int64  `json:"id"`
	ClusterID     int64  `json:"cluster_id"`
	Hostname      string `json:"hostname"`
	IP            string `json:"ip"`
	Port          int    `json:"port"`
	UploadPort    int    `json:"upload_port,omitempty"`
	IDC           string `json:"idc"`
	Location      string `json:"location"`
	State         string `json:"state"`
	LastKeepAlive int64  `json:"last_keepalive"`
	CreatedAt     int64  `json:"created_at"`
}

func (k componentKind) cols() string {
	up := "0"
	if k == kindSeedPeer {
		up = "upload_port"
	}
	return "id, cluster_id, hostname, ip, port, " + up + ", idc, location, last_keepalive, created_at"
}

func (m *Manager) scanComponent(s interface{ Scan(...any) error }) (Component, error) {
	var c Component
	err := s.Scan(&c.ID, &c.ClusterID, &c.Hostname, &c.IP, &c.Port, &c.UploadPort, &c.IDC, &c.Location, &c.LastKeepAlive, &c.CreatedAt)
	c.State = "inactive"
	if nowMs()-c.LastKeepAlive <= m.cfg.KeepAliveTimeout.D().Milliseconds() {
		c.State = "active"
	}
	return c, err
}

func (m *Manager) handleListComponents(k componentKind) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var (
			where []string
			args  []any
		)
		if s := r.URL.Query().Get("cluster_id"); s != "" {
			var id int64
			if _, err := fmt.Sscan(s, &id); err != nil {
				fail(w, badRequest("cluster_id %q is not an integer", s))
				return
			}
			where, args = append(where, "cluster_id = ?"), append(args, id)
		}
		switch st := r.URL.Query().Get("state"); st {
		case "":
		case "active":
			where, args = append(where, "last_keepalive >= ?"), append(args, m.activeSince())
		case "inactive":
			where, args = append(where, "last_keepalive < ?"), append(args, m.activeSince())
		default:
			fail(w, badRequest("state %q: want active or inactive", st))
			return
		}
		listRows(m, w, r, k.table, k.cols(), strings.Join(where, " AND "), args, m.scanComponent)
	}
}

func (m *Manager) activeSince() int64 { return nowMs() - m.cfg.KeepAliveTimeout.D().Milliseconds() }

func (m *Manager) handleGetComponent(k componentKind) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := pathID(r)
		if err == nil {
			var c Component
			if c, err = m.scanComponent(m.db.QueryRow(r.Context(), "SELECT "+k.cols()+" FROM "+k.table+" WHERE id = ?", id)); err == nil {
				writeJSON(w, http.StatusOK, c)
				return
			}
		}
		fail(w, err)
	}
}

func (m *Manager) handleDeleteComponent(k componentKind) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := pathID(r)
		if err == nil {
			err = m.deleteRow(r, k.table, id)
		}
		if err != nil {
			fail(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

// Peer is a daemon known from its scheduler-list requests.
type Peer struct {
	ID         int64  `json:"id"`
	HostID     string `json:"host_id"`
	ClusterID  int64  `json:"cluster_id"`
	Hostname   string `json:"hostname"`
	IP         string `json:"ip"`
	Port       int    `json:"port"`
	UploadPort int    `json:"upload_port"`
	IDC        string `json:"idc"`
	Location   string `json:"location"`
	Seed       bool   `json:"seed"`
	LastSeen   int64  `json:"last_seen"`
}

const peerCols = "id, host_id, cluster_id, hostname, ip, port, upload_port, idc, location, seed, last_seen"

func scanPeer(s interface{ Scan(...any) error }) (Peer, error) {
	var (
		p    Peer
		seed int
	)
	err := s.Scan(&p.ID, &p.HostID, &p.ClusterID, &p.Hostname, &p.IP, &p.Port, &p.UploadPort, &p.IDC, &p.Location, &seed, &p.LastSeen)
	p.Seed = seed != 0
	return p, err
}

func (m *Manager) handleListPeers(w http.ResponseWriter, r *http.Request) {
	listRows(m, w, r, "peers", peerCols, "last_seen >= ?", []any{nowMs() - m.cfg.PeerTTL.D().Milliseconds()}, scanPeer)
}

// ---- gRPC ----

type grpcService struct {
	managerv1.UnimplementedManagerServer
	m *Manager
}

func (s *grpcService) count(method string, err error) error {
	outcome := "ok"
	if err != nil {
		outcome = status.Code(err).String()
	}
	s.m.m.grpc.WithLabelValues(method, outcome).Inc()
	return err
}

func kindOf(t managerv1.ComponentType) (componentKind, error) {
	switch t {
	case managerv1.ComponentType_COMPONENT_TYPE_SCHEDULER:
		return kindScheduler, nil
	case managerv1.ComponentType_COMPONENT_TYPE_SEED_PEER:
		return kindSeedPeer, nil
	}
	return componentKind{}, status.Errorf(codes.InvalidArgument, "unknown component type %v", t)
}

func (s *grpcService) Register(ctx context.Context, req *managerv1.RegisterRequest) (*managerv1.RegisterResponse, error) {
	resp, err := s.register(ctx, req)
	return resp, s.count("Register", err)
}

func (s *grpcService) register(ctx context.Context, req *managerv1.RegisterRequest) (*managerv1.RegisterResponse, error) {
	k, err := kindOf(req.GetType())
	if err != nil {
		return nil, err
	}
	if net.ParseIP(req.GetIp()) == nil || req.GetPort() <= 0 || req.GetPort() > 65535 {
		return nil, status.Errorf(codes.InvalidArgument, "register: want an IP and a port, got %q:%d", req.GetIp(), req.GetPort())
	}
	m := s.m
	hostID, err := authorizeComponent(ctx, k, req.GetHostId())
	if err != nil {
		return nil, err
	}
	if err := m.checkOwner(ctx, k, "ip = ? AND port = ?", hostID, req.GetIp(), req.GetPort()); err != nil {
		return nil, err
	}
	cid := req.GetClusterId()
	if cid == 0 {
		if err := m.db.QueryRow(ctx, "SELECT id FROM clusters WHERE is_default = 1 ORDER BY id LIMIT 1").Scan(&cid); err != nil {
			return nil, status.Errorf(codes.Internal, "default cluster: %v", err)
		}
	} else {
		var n int
		if err := m.db.QueryRow(ctx, "SELECT COUNT(*) FROM clusters WHERE id = ?", cid).Scan(&n); err != nil || n == 0 {
			return nil, status.Errorf(codes.NotFound, "cluster %d does not exist", cid)
		}
	}
	now := nowMs()
	cols, vals, upd := "cluster_id, hostname, ip, port, idc, location, last_keepalive, created_at, host_id", "?, ?, ?, ?, ?, ?, ?, ?, ?",
		"cluster_id = excluded.cluster_id, hostname = excluded.hostname, idc = excluded.idc, location = excluded.location, last_keepalive = excluded.last_keepalive, host_id = excluded.host_id"
	args := []any{cid, req.GetHostname(), req.GetIp(), req.GetPort(), req.GetIdc(), req.GetLocation(), now, now, hostID}
	if k == kindSeedPeer {
		cols, vals, upd = cols+", upload_port", vals+", ?", upd+", upload_port = excluded.upload_port"
		args = append(args, req.GetUploadPort())
	}
	id, err := m.db.Insert(ctx, "INSERT INTO "+k.table+" ("+cols+") VALUES ("+vals+") ON CONFLICT (ip, port) DO UPDATE SET "+upd, args...)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "register: %v", err)
	}
	m.log.Info("component registered", "type", k.table, "id", id, "cluster_id", cid, "addr", net.JoinHostPort(req.GetIp(), fmt.Sprint(req.GetPort())))
	return &managerv1.RegisterResponse{Id: id, ClusterId: cid, KeepaliveIntervalMs: m.cfg.KeepAliveInterval.D().Milliseconds()}, nil
}

func (s *grpcService) KeepAlive(ctx context.Context, req *managerv1.KeepAliveRequest) (*managerv1.KeepAliveResponse, error) {
	k, err := kindOf(req.GetType())
	if err == nil {
		var hostID string
		if hostID, err = authorizeComponent(ctx, k, ""); err == nil {
			err = s.m.checkOwner(ctx, k, "id = ?", hostID, req.GetId())
		}
		if err != nil {
			return nil, s.count("KeepAlive", err)
		}
		var res sql.Result
		res, err = s.m.db.Exec(ctx, "UPDATE "+k.table+" SET last_keepalive = ? WHERE id = ?", nowMs(), req.GetId())
		if err != nil {
			err = status.Errorf(codes.Internal, "keepalive: %v", err)
		} else if n, _ := res.RowsAffected(); n == 0 {
			err = status.Errorf(codes.NotFound, "%s %d is not registered", k.table, req.GetId())
		}
	}
	if err != nil {
		return nil, s.count("KeepAlive", err)
	}
	return &managerv1.KeepAliveResponse{}, s.count("KeepAlive", nil)
}

func (s *grpcService) ListSchedulers(ctx context.Context, req *managerv1.ListSchedulersRequest) (*managerv1.ListSchedulersResponse, error) {
	resp, err := s.listSchedulers(ctx, req)
	return resp, s.count("ListSchedulers", err)
}

func (s *grpcService) listSchedulers(ctx context.Context, req *managerv1.ListSchedulersRequest) (*managerv1.ListSchedulersResponse, error) {
	m := s.m
	if !identity.Allows(ctx, identity.RolePeer, identity.RoleSeed, identity.RoleScheduler) {
		return nil, status.Error(codes.PermissionDenied, "list schedulers: only verified components may ask")
	}
	if req.GetHostId() != "" && !identity.OwnsHost(ctx, req.GetHostId()) {
		return nil, status.Errorf(codes.PermissionDenied, "list schedulers: host %q is not the caller's", req.GetHostId())
	}
	cid, err := m.matchCluster(ctx, req.GetIp(), req.GetIdc(), req.GetLocation())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "match cluster: %v", err)
	}
	now := nowMs()
	if req.GetHostId() != "" && net.ParseIP(req.GetIp()) != nil && req.GetPeerPort() > 0 {
		seed := 0
		if req.GetSeed() {
			seed = 1
		}
		_, err := m.db.Exec(ctx, `INSERT INTO peers (host_id, cluster_id, hostname, ip, port, upload_port, idc, location, seed, last_seen)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (host_id) DO UPDATE SET cluster_id = excluded.cluster_id, hostname = excluded.hostname,
			ip = excluded.ip, port = excluded.port, upload_port = excluded.upload_port, idc = excluded.idc, location = excluded.location,
			seed = excluded.seed, last_seen = excluded.last_seen`,
			req.GetHostId(), cid, req.GetHostname(), req.GetIp(), req.GetPeerPort(), req.GetUploadPort(), req.GetIdc(), req.GetLocation(), seed, now)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "record peer: %v", err)
		}
	}
	rows, err := m.db.Query(ctx, "SELECT id, hostname, ip, port FROM schedulers WHERE cluster_id = ? AND last_keepalive >= ? ORDER BY id", cid, m.activeSince())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list schedulers: %v", err)
	}
	defer rows.Close()
	resp := &managerv1.ListSchedulersResponse{RefreshIntervalMs: m.cfg.SchedulerRefreshInterval.D().Milliseconds()}
	for rows.Next() {
		sc := &managerv1.Scheduler{ClusterId: cid}
		if err := rows.Scan(&sc.Id, &sc.Hostname, &sc.Ip, &sc.Port); err != nil {
			return nil, status.Errorf(codes.Internal, "list schedulers: %v", err)
		}
		resp.Schedulers = append(resp.Schedulers, sc)
	}
	return resp, rows.Err()
}

// matchCluster picks the cluster whose scope fits the daemon best: a CIDR
// holding its IP counts most, then its IDC, then a location prefix; with no
// match, the default cluster.
func (m *Manager) matchCluster(ctx context.Context, ip, idc, location string) (int64, error) {
	rows, err := m.db.Query(ctx, "SELECT "+clusterCols+" FROM clusters ORDER BY id")
	if err != nil {
		return 0, err
	}
	var cs []Cluster
	for rows.Next() {
		c, err := scanCluster(rows)
		if err != nil {
			rows.Close()
			return 0, err
		}
		cs = append(cs, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	best, bestScore, def := int64(0), 0, int64(0)
	for _, c := range cs {
		if c.IsDefault && def == 0 {
			def = c.ID
		}
		if sc := scopeScore(c.Scopes, ip, idc, location); sc > bestScore {
			best, bestScore = c.ID, sc
		}
	}
	if best != 0 {
		return best, nil
	}
	if def == 0 {
		return 0, errors.New("no default cluster")
	}
	return def, nil
}

func scopeScore(s ClusterScope, ip, idc, location string) int {
	score := 0
	if a := net.ParseIP(ip); a != nil {
		for _, c := range s.CIDRs {
			if _, n, err := net.ParseCIDR(c); err == nil && n.Contains(a) {
				score += 4
				break
			}
		}
	}
	if idc != "" && s.IDC != "" {
		for _, v := range strings.Split(s.IDC, "|") {
			if strings.EqualFold(strings.TrimSpace(v), idc) {
				score += 2
				break
			}
		}
	}
	if location != "" && s.Location != "" && (location == s.Location || strings.HasPrefix(location, s.Location+"|")) {
		score++
	}
	return score
}

// authorizeComponent checks that the caller's certificate may act as a
// component of kind k (a scheduler certificate for schedulers, a seed
// certificate for seed peers) and for hostID, and returns the host ID to
// record: the certificate's (hostID may be empty), or in insecure mode the
// claimed one.
func authorizeComponent(ctx context.Context, k componentKind, hostID string) (string, error) {
	role := identity.RoleScheduler
	if k == kindSeedPeer {
		role = identity.RoleSeed
	}
	if !identity.Allows(ctx, role) {
		id, _ := identity.FromContext(ctx)
		return "", status.Errorf(codes.PermissionDenied, "%s: needs a %s certificate, the caller's is %q", k.table, role, id.Role)
	}
	id, _ := identity.FromContext(ctx)
	if id.Insecure {
		return hostID, nil
	}
	if hostID != "" && hostID != id.HostID {
		return "", status.Errorf(codes.PermissionDenied, "%s: host %q is not the caller's (certificate names %q)", k.table, hostID, id.HostID)
	}
	return id.HostID, nil
}

// checkOwner refuses a verified caller acting on a record (found by where)
// that another host registered. Insecure callers are not checked.
func (m *Manager) checkOwner(ctx context.Context, k componentKind, where, hostID string, args ...any) error {
	if id, _ := identity.FromContext(ctx); id.Insecure {
		return nil
	}
	var owner string
	err := m.db.QueryRow(ctx, "SELECT host_id FROM "+k.table+" WHERE "+where, args...).Scan(&owner)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil
	case err != nil:
		return status.Errorf(codes.Internal, "%s: owner: %v", k.table, err)
	case owner != "" && owner != hostID:
		return status.Errorf(codes.PermissionDenied, "%s: the record belongs to host %q, not %q", k.table, owner, hostID)
	}
	return nil
}
