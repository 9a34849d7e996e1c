// Command clientgo-peer is a benchmark peer: one leader-election candidate built on client-go's
// tools/leaderelection with a resourcelock.LeaseLock, reporting its role on GET /leader exactly
// like lease-sidecar does ({"is_leader": bool, ...}), so one harness can measure both.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"log"
	"net"
	"net/http"
	"os/signal"
	"sync"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// state is what GET /leader shows; the election callbacks write it.
type state struct {
	mu       sync.Mutex
	role     string // unknown until the first observation, then leader or standby
	holder   string
	identity string
}

func (s *state) set(role, holder string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.role = role
	if holder != "" {
		s.holder = holder
	}
}

func (s *state) observeLeader(holder string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holder = holder
	if holder != s.identity {
		s.role = "standby" // our own leadership is set by OnStartedLeading, not here
	}
}

func (s *state) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/leader" {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	body := map[string]any{"is_leader": s.role == "leader", "role": s.role, "holder": s.holder,
		"identity": s.identity}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(body)
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig path")
	namespace := flag.String("namespace", "default", "namespace of the Lease")
	leaseName := flag.String("lease-name", "", "name of the Lease (required)")
	identity := flag.String("identity", "", "holderIdentity of this candidate (required)")
	leaseDuration := flag.Duration("lease-duration", 4*time.Second, "LeaseDuration")
	renewDeadline := flag.Duration("renew-deadline", 3*time.Second, "RenewDeadline")
	retryPeriod := flag.Duration("retry-period", time.Second, "RetryPeriod")
	httpAddress := flag.String("http-address", "127.0.0.1:4040", "address of GET /leader")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	if *leaseName == "" || *identity == "" {
		log.Fatal("--lease-name and --identity are required")
	}

	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatalf("kubeconfig: %v", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		log.Fatalf("client: %v", err)
	}

	st := &state{role: "unknown", identity: *identity}
	listener, err := net.Listen("tcp", *httpAddress)
	if err != nil {
		log.Fatalf("listen %s: %v", *httpAddress, err)
	}
	server := &http.Server{Handler: st, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := server.Serve(listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Fatalf("http: %v", err)
		}
	}()

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()

	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: *leaseName, Namespace: *namespace},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: *identity},
	}
	// Run returns when the context ends or the lease is lost; contend again until the context ends.
	for ctx.Err() == nil {
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   *leaseDuration,
			RenewDeadline:   *renewDeadline,
			RetryPeriod:     *retryPeriod,
			ReleaseOnCancel: true,
			Name:            *leaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) { st.set("leader", *identity) },
				OnStoppedLeading: func() { st.set("standby", "") },
				OnNewLeader:      st.observeLeader,
			},
		})
	}
	log.Printf("stopped contending (%v); shutting down", context.Cause(ctx))
	shutdownCtx, done := context.WithTimeout(context.Background(), time.Second)
	defer done()
	_ = server.Shutdown(shutdownCtx)
}
