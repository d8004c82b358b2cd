// graven-cert-manager: the real cert-manager controllers a CA Issuer needs, run outside the
// cluster like the other control-plane binaries of `make kube` (tools/kube/up.sh).
//
// Upstream's cmd/controller is a module of its own that the Go proxy does not serve; this main
// wires the same registered controllers (pkg/controller.Known) through the same
// controller.NewContextFactory, with only the issuers this test cluster uses (SelfSigned to
// bootstrap a CA, CA to issue) and no ACME, Vault, Venafi, Gateway or ingress shims.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	controller "github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	// Each import registers its controllers (or issuer kinds) with pkg/controller.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

// The controllers started, by their registered names.
var wanted = []string{
	"issuers",
	"clusterissuers",
	"certificaterequests-approver",
	"certificaterequests-issuer-ca",
	"certificaterequests-issuer-selfsigned",
	"certificates-trigger",
	"certificates-issuing",
	"certificates-key-manager",
	"certificates-request-manager",
	"certificates-readiness",
	"certificates-revision-manager",
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the apiserver to manage")
	clusterNS := flag.String("cluster-resource-namespace", "cert-manager",
		"where ClusterIssuers keep their Secrets")
	workers := flag.Int("workers", 2, "workers per controller")
	list := flag.Bool("list", false, "print the registered controllers and exit")
	klog.InitFlags(nil)
	flag.Parse()
	if *list {
		var known []string
		for name := range controller.Known() {
			known = append(known, name)
		}
		sort.Strings(known)
		fmt.Println(known)
		return
	}
	if err := run(*kubeconfig, *clusterNS, *workers); err != nil {
		fmt.Fprintln(os.Stderr, "graven-cert-manager:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, clusterNS string, workers int) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx = logf.NewContext(ctx, klog.Background(), "cert-manager")

	opts := controller.ContextOptions{
		Kubeconfig:         kubeconfig,
		KubernetesAPIQPS:   50,
		KubernetesAPIBurst: 100,
		IssuerOptions:      controller.IssuerOptions{ClusterResourceNamespace: clusterNS},
		CertificateOptions: controller.CertificateOptions{
			// upstream's defaults (cmd/controller flags)
			CopiedAnnotationPrefixes: []string{"*", "-kubectl.kubernetes.io/",
				"-fluxcd.io/", "-argocd.argoproj.io/"},
			CertificateRequestMinimumBackoffDuration: time.Hour,
			CertificateRequestMaximumBackoffDuration: 32 * time.Hour,
		},
	}
	factory, err := controller.NewContextFactory(ctx, opts)
	if err != nil {
		return err
	}
	// Construct every controller first: construction registers the informers they share.
	known := controller.Known()
	var run []controller.Interface
	for _, name := range wanted {
		build, ok := known[name]
		if !ok {
			return fmt.Errorf("controller %q is not registered in this cert-manager", name)
		}
		c, err := build(factory)
		if err != nil {
			return fmt.Errorf("controller %s: %w", name, err)
		}
		run = append(run, c)
	}
	shared, err := factory.Build()
	if err != nil {
		return err
	}
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.SharedInformerFactory.Start(ctx.Done())
	klog.InfoS("starting controllers", "controllers", wanted)

	var wg sync.WaitGroup
	errs := make(chan error, len(run))
	for i, c := range run {
		wg.Go(func() {
			if err := c.Run(workers, ctx); err != nil {
				errs <- fmt.Errorf("%s: %w", wanted[i], err)
				stop()
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}
