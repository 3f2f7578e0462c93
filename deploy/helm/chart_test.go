package helm

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/yaml"
)

// renders are the value sets every structural test runs against.
var renders = []struct {
	name string
	args []string
}{
	{"default", nil},
	{"production", productionValues},
	{"github-runners", githubRunnersValues},
	{"grpc-probes", []string{"--set", "probes.mode=grpc"}},
}

func TestPodSecurityIsRestricted(t *testing.T) {
	for _, r := range renders {
		ms := render(t, r.args...)
		for _, c := range components {
			t.Run(r.name+"/"+c, func(t *testing.T) {
				_, w := ms.workload(t, c)
				if got, want := restrictedViolations(w.Template.Spec), []string(nil); !cmp.Equal(got, want) {
					t.Errorf("restricted pod security violations (-got +want):\n%s", cmp.Diff(got, want))
				}
			})
		}
	}
}

// restrictedViolations lists what breaks the restricted Pod Security
// Standard, plus the chart's own rules (read-only root, no API token).
func restrictedViolations(p podSpec) []string {
	var v []string
	bad := func(format string, args ...any) { v = append(v, fmt.Sprintf(format, args...)) }
	isTrue := func(b *bool) bool { return b != nil && *b }
	isFalse := func(b *bool) bool { return b != nil && !*b }
	if p.HostNetwork || p.HostPID || p.HostIPC {
		bad("pod: host namespaces")
	}
	if !isFalse(p.AutomountServiceAccountToken) {
		bad("pod: automountServiceAccountToken not false")
	}
	psc := p.SecurityContext
	if psc == nil || !isTrue(psc.RunAsNonRoot) {
		bad("pod: runAsNonRoot not true")
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != "RuntimeDefault" {
		bad("pod: seccompProfile not RuntimeDefault")
	}
	if psc != nil && psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		bad("pod: runAsUser 0")
	}
	for _, vol := range p.Volumes {
		if len(vol.HostPath) > 0 {
			bad("volume %s: hostPath", vol.Name)
		}
	}
	for _, c := range append(slices.Clone(p.InitContainers), p.Containers...) {
		sc := c.SecurityContext
		if sc == nil {
			bad("%s: no securityContext", c.Name)
			continue
		}
		if !isTrue(sc.RunAsNonRoot) {
			bad("%s: runAsNonRoot not true", c.Name)
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			bad("%s: runAsUser 0", c.Name)
		}
		if isTrue(sc.Privileged) {
			bad("%s: privileged", c.Name)
		}
		if !isFalse(sc.AllowPrivilegeEscalation) {
			bad("%s: allowPrivilegeEscalation not false", c.Name)
		}
		if !isTrue(sc.ReadOnlyRootFilesystem) {
			bad("%s: readOnlyRootFilesystem not true", c.Name)
		}
		if sc.SeccompProfile == nil || sc.SeccompProfile.Type != "RuntimeDefault" {
			bad("%s: seccompProfile not RuntimeDefault", c.Name)
		}
		if sc.Capabilities == nil || !cmp.Equal(sc.Capabilities.Drop, []string{"ALL"}) || len(sc.Capabilities.Add) > 0 {
			bad("%s: capabilities not exactly drop [ALL]", c.Name)
		}
	}
	return v
}

func TestProbesCheckGRPCHealth(t *testing.T) {
	execProbe := func(component string) []string {
		return []string{
			"/credmatrix-probe",
			"--addr=127.0.0.1:8443",
			"--server-name=" + name(component) + "." + namespace + ".svc",
			"--ca-file=/etc/credmatrix/tls/ca.crt",
			"--cert-file=/etc/credmatrix/tls/tls.crt",
			"--key-file=/etc/credmatrix/tls/tls.key",
			"--timeout=4s",
		}
	}
	for _, r := range renders {
		ms := render(t, r.args...)
		for _, c := range components {
			t.Run(r.name+"/"+c, func(t *testing.T) {
				_, w := ms.workload(t, c)
				if len(w.Template.Spec.Containers) != 1 {
					t.Fatalf("want one container, got %d", len(w.Template.Spec.Containers))
				}
				ctr := w.Template.Spec.Containers[0]
				for kind, p := range map[string]*probe{"startup": ctr.StartupProbe, "readiness": ctr.ReadinessProbe, "liveness": ctr.LivenessProbe} {
					if p == nil {
						t.Errorf("%s probe missing", kind)
						continue
					}
					if len(p.HTTPGet) > 0 || len(p.TCPSocket) > 0 {
						t.Errorf("%s probe is not a gRPC health check", kind)
					}
					if r.name == "grpc-probes" {
						if p.GRPC == nil || p.GRPC.Port != 8081 || p.Exec != nil {
							t.Errorf("%s probe: want native grpc on port 8081, got %+v", kind, p)
						}
						continue
					}
					if p.Exec == nil || p.GRPC != nil {
						t.Errorf("%s probe: want exec credmatrix-probe, got %+v", kind, p)
						continue
					}
					if diff := cmp.Diff(p.Exec.Command, execProbe(c)); diff != "" {
						t.Errorf("%s probe command (-got +want):\n%s", kind, diff)
					}
				}
			})
		}
	}
}

// peer renders a NetworkPolicy peer as a short string for comparisons.
func peerString(pod, ns *labelSelector, ipBlock any) string {
	var parts []string
	kv := func(prefix string, m map[string]string) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			parts = append(parts, prefix+k+"="+m[k])
		}
	}
	if ns != nil {
		kv("ns:", ns.MatchLabels)
	}
	if pod != nil {
		kv("pod:", pod.MatchLabels)
	}
	if ipBlock != nil {
		parts = append(parts, fmt.Sprintf("ip:%v", ipBlock))
	}
	return strings.Join(parts, ",")
}

// rule is one ingress rule, simplified.
type rule struct {
	Ports []string
	From  []string
}

func ingressRules(t *testing.T, ms manifests, component string) []rule {
	t.Helper()
	np := decodeSpec[networkPolicySpec](t, ms.get(t, "NetworkPolicy", name(component)))
	if !slices.Contains(np.PolicyTypes, "Ingress") {
		t.Fatalf("NetworkPolicy %s does not restrict ingress", name(component))
	}
	if diff := cmp.Diff(np.PodSelector.MatchLabels, selector(component)); diff != "" {
		t.Fatalf("NetworkPolicy %s selects other pods (-got +want):\n%s", name(component), diff)
	}
	rules := []rule{}
	for _, in := range np.Ingress {
		var r rule
		for _, p := range in.Ports {
			r.Ports = append(r.Ports, fmt.Sprint(p.Port))
		}
		for _, f := range in.From {
			r.From = append(r.From, peerString(f.PodSelector, f.NamespaceSelector, f.IPBlock))
		}
		rules = append(rules, r)
	}
	return rules
}

func selector(component string) map[string]string {
	return map[string]string{
		"app.kubernetes.io/name":      "credmatrix",
		"app.kubernetes.io/instance":  "cm",
		"app.kubernetes.io/component": component,
	}
}

func podPeer(component string) string {
	return peerString(&labelSelector{MatchLabels: selector(component)}, nil, nil)
}

func TestNetworkPolicies(t *testing.T) {
	def := render(t)
	prod := render(t, productionValues...)
	gh := render(t, githubRunnersValues...)
	monitoring := "ns:kubernetes.io/metadata.name=monitoring"
	tests := []struct {
		name      string
		ms        manifests
		component string
		want      []rule
	}{
		{"default/audit-only-from-broker-and-keyguard", def, "audit",
			[]rule{{Ports: []string{"grpc"}, From: []string{podPeer("broker"), podPeer("keyguard")}}}},
		{"default/broker-no-client-declared-no-ingress", def, "broker", []rule{}},
		{"default/keyguard-no-client-declared-no-ingress", def, "keyguard", []rule{}},
		{"production/audit-broker-keyguard-operators-and-scrapers", prod, "audit", []rule{
			{Ports: []string{"grpc"}, From: []string{podPeer("broker"), podPeer("keyguard"), "ns:kubernetes.io/metadata.name=security-ops"}},
			{Ports: []string{"metrics"}, From: []string{monitoring}},
		}},
		{"production/broker-mtls-operators-public-ingress-and-runners", prod, "broker", []rule{
			{Ports: []string{"grpc"}, From: []string{"ns:kubernetes.io/metadata.name=security-ops"}},
			{Ports: []string{"public"}, From: []string{"ns:kubernetes.io/metadata.name=ingress-nginx", "ns:credmatrix.io/ci-runners=true"}},
			{Ports: []string{"metrics"}, From: []string{monitoring}},
		}},
		{"production/keyguard-only-declared-apps", prod, "keyguard", []rule{
			{Ports: []string{"grpc"}, From: []string{"ns:credmatrix.io/keyguard-client=true"}},
			{Ports: []string{"metrics"}, From: []string{monitoring}},
		}},
		{"github-runners/broker-public-port-from-anywhere-mtls-port-not", gh, "broker", []rule{
			{Ports: []string{"grpc"}, From: []string{"ns:kubernetes.io/metadata.name=security-ops"}},
			{Ports: []string{"public"}, From: []string{"ip:map[cidr:0.0.0.0/0]"}},
			{Ports: []string{"metrics"}, From: []string{monitoring}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(ingressRules(t, tc.ms, tc.component), tc.want); diff != "" {
				t.Errorf("ingress rules (-got +want):\n%s", diff)
			}
		})
	}
}

// egressRules returns a component's egress rules as "ports -> peers".
func egressRules(t *testing.T, ms manifests, component string) []rule {
	t.Helper()
	np := decodeSpec[networkPolicySpec](t, ms.get(t, "NetworkPolicy", name(component)))
	if !slices.Contains(np.PolicyTypes, "Egress") {
		t.Fatalf("NetworkPolicy %s does not restrict egress", name(component))
	}
	rules := []rule{}
	for _, e := range np.Egress {
		var r rule
		for _, p := range e.Ports {
			r.Ports = append(r.Ports, fmt.Sprintf("%v/%s", p.Port, p.Protocol))
		}
		for _, to := range e.To {
			r.From = append(r.From, peerString(to.PodSelector, to.NamespaceSelector, to.IPBlock))
		}
		rules = append(rules, r)
	}
	return rules
}

// TestEgressPolicies checks each pod may open connections only to what it
// calls: DNS; audit's gRPC port (broker, keyguard); PostgreSQL when it
// uses it; HTTPS when it calls AWS or OIDC issuers. Audit never gets
// HTTPS; keyguard with the local backend and no issuers neither.
func TestEgressPolicies(t *testing.T) {
	def := render(t)
	prod := render(t, productionValues...)
	dns := rule{Ports: []string{"53/UDP", "53/TCP"}, From: []string{"ns:kubernetes.io/metadata.name=kube-system,pod:k8s-app=kube-dns"}}
	toAudit := rule{Ports: []string{"8443/TCP"}, From: []string{podPeer("audit")}}
	https := rule{Ports: []string{"443/TCP"}, From: []string{"ip:map[cidr:0.0.0.0/0]"}}
	pg := rule{Ports: []string{"5432/TCP"}, From: []string{"ip:map[cidr:10.20.0.0/16]"}}
	tests := []struct {
		name      string
		ms        manifests
		component string
		want      []rule
	}{
		{"default/audit-dns-only", def, "audit", []rule{dns}},
		{"default/broker-audit-and-issuers", def, "broker", []rule{dns, toAudit, https}},
		{"default/keyguard-local-audit-only", def, "keyguard", []rule{dns, toAudit}},
		{"production/audit-postgres", prod, "audit", []rule{dns, pg}},
		{"production/broker-postgres-and-aws", prod, "broker", []rule{dns, toAudit, pg, https}},
		{"production/keyguard-postgres-and-kms", prod, "keyguard", []rule{dns, toAudit, pg, https}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(egressRules(t, tc.ms, tc.component), tc.want); diff != "" {
				t.Errorf("egress rules (-got +want):\n%s", diff)
			}
		})
	}

	t.Run("off", func(t *testing.T) {
		ms := render(t, "--set", "networkPolicy.egress.enabled=false")
		np := decodeSpec[networkPolicySpec](t, ms.get(t, "NetworkPolicy", name("broker")))
		if slices.Contains(np.PolicyTypes, "Egress") || len(np.Egress) != 0 {
			t.Errorf("egress restricted with networkPolicy.egress.enabled=false: %v", np.PolicyTypes)
		}
	})
}

// secretLooking matches material that must never be in a rendered
// manifest: PEM keys, DSNs with passwords, AWS keys.
var secretLooking = regexp.MustCompile(`PRIVATE KEY|postgres(ql)?://[^\s]*:[^\s]*@|AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}`)

func TestSecretsOnlyByReference(t *testing.T) {
	for _, r := range renders {
		t.Run(r.name, func(t *testing.T) {
			ms := render(t, r.args...)
			if got := ms.ofKind("Secret"); len(got) != 0 {
				t.Errorf("chart renders %d Secret(s); secrets must come by reference only", len(got))
			}
			for _, o := range ms.ofKind("ConfigMap") {
				for k, v := range o.Data {
					if secretLooking.MatchString(v) {
						t.Errorf("ConfigMap %s key %s holds secret-looking material", o.Metadata.Name, k)
					}
				}
			}
			for _, c := range components {
				_, w := ms.workload(t, c)
				for _, ctr := range w.Template.Spec.Containers {
					for _, e := range ctr.Env {
						if e.Value != "" {
							t.Errorf("%s: env %s has an inline value; the chart passes settings by file", c, e.Name)
						}
					}
				}
				for _, vol := range w.Template.Spec.Volumes {
					if vol.Secret != nil && (vol.Secret.DefaultMode == nil || *vol.Secret.DefaultMode&0o007 != 0) {
						t.Errorf("%s: secret volume %s is readable by others (the services refuse such key files)", c, vol.Name)
					}
				}
			}
		})
	}
}

// TestInlineSecretsAreRejected tries to pass secret material as values:
// the schema has no place for it, so each attempt fails the install and
// the value is not echoed.
func TestInlineSecretsAreRejected(t *testing.T) {
	const secret = "s3cr3t-do-not-print"
	tests := []struct {
		name string
		set  string
	}{
		{"attack/postgres-dsn-as-value", "audit.postgres.dsn=postgres://audit:" + secret + "@db/audit"},
		{"attack/checkpoint-key-as-value", "audit.checkpointKey.value=" + secret},
		{"attack/hmac-key-as-value", "broker.keys.auditHMACKeyValue=" + secret},
		{"attack/root-key-as-value", "keyguard.local.rootKeyValue=" + secret},
		{"attack/tls-key-as-value", "tls.existingSecrets.key=" + secret},
		{"attack/aws-keys-as-values", "broker.awsSecretAccessKey=" + secret},
		{"attack/secret-env-value", "broker.extraEnv[0].name=AWS_SECRET_ACCESS_KEY,broker.extraEnv[0].value=" + secret},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr, ok := helmTemplate(t, "--set", tc.set)
			if ok {
				t.Fatalf("helm template accepted %q", tc.set)
			}
			if strings.Contains(out+stderr, secret) {
				t.Errorf("the rejected secret value is echoed:\n%s", stderr)
			}
		})
	}
}

func TestChecksumsRollPods(t *testing.T) {
	base := render(t)
	annotations := func(ms manifests, component string) map[string]string {
		_, w := ms.workload(t, component)
		return w.Template.Metadata.Annotations
	}
	for _, c := range components {
		if annotations(base, c)["checksum/config"] == "" {
			t.Fatalf("%s: no checksum/config annotation", c)
		}
	}
	tests := []struct {
		name        string
		set         []string
		component   string
		annotation  string
		wantChanged bool
	}{
		{"policy-change/rolls-broker", []string{"--set-string", "broker.policy=version: 1"}, "broker", "checksum/policy", true},
		{"policy-change/leaves-audit", []string{"--set-string", "broker.policy=version: 1"}, "audit", "checksum/config", false},
		{"policy-change/leaves-keyguard", []string{"--set-string", "broker.policy=version: 1"}, "keyguard", "checksum/keyring", false},
		{"keyring-change/rolls-keyguard", []string{"--set-string", "keyguard.keyring=rings: []"}, "keyguard", "checksum/keyring", true},
		{"keyring-change/leaves-broker", []string{"--set-string", "keyguard.keyring=rings: []"}, "broker", "checksum/policy", false},
		{"config-change/rolls-broker", []string{"--set", "broker.logLevel=debug"}, "broker", "checksum/config", true},
		{"config-change/leaves-audit", []string{"--set", "broker.logLevel=debug"}, "audit", "checksum/config", false},
		{"principals-change/rolls-audit", []string{"--set", "audit.readPrincipals[0]=spiffe://cluster.local/ns/ops/sa/auditor"}, "audit", "checksum/config", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := annotations(base, tc.component)[tc.annotation]
			after := annotations(render(t, tc.set...), tc.component)[tc.annotation]
			if before == "" || after == "" {
				t.Fatalf("annotation %s missing (before %q, after %q)", tc.annotation, before, after)
			}
			if got := before != after; got != tc.wantChanged {
				t.Errorf("%s changed = %v, want %v", tc.annotation, got, tc.wantChanged)
			}
		})
	}
}

func TestBadValuesFailAtInstall(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantStderr string
	}{
		{"enum/audit-store", []string{"--set", "audit.store=mysql"}, "/audit/store"},
		{"enum/broker-provider", []string{"--set", "broker.provider=gcp"}, "/broker/provider"},
		{"enum/keyguard-backend", []string{"--set", "keyguard.backend=vault"}, "/keyguard/backend"},
		{"enum/tls-source", []string{"--set", "tls.source=selfSigned"}, "/tls/source"},
		{"enum/probe-mode", []string{"--set", "probes.mode=tcp"}, "/probes/mode"},
		{"enum/log-level", []string{"--set", "audit.logLevel=loud"}, "/audit/logLevel"},
		{"range/grpc-port", []string{"--set", "grpcPort=70000"}, "/grpcPort"},
		{"range/cpu-target", []string{"--set", "broker.autoscaling.targetCPUUtilizationPercentage=150"}, "targetCPUUtilizationPercentage"},
		{"pattern/irsa-role-arn", []string{"--set", "broker.irsaRoleArn=arn:aws:iam::123:user/x"}, "/broker/irsaRoleArn"},
		{"pattern/image-digest", []string{"--set", "image.digest=md5:abc"}, "/image/digest"},
		{"pattern/drain-timeout", []string{"--set", "drainTimeout=forever"}, "/drainTimeout"},
		{"pattern/read-principal-not-spiffe", []string{"--set", "audit.readPrincipals[0]=operator"}, "/audit/readPrincipals/0"},
		{"pattern/secret-name", []string{"--set", "broker.keys.existingSecret=Not_A_Name"}, "/broker/keys/existingSecret"},
		{"typo/top-level", []string{"--set", "replicaCount=3"}, "replicaCount"},
		{"typo/nested", []string{"--set", "audit.sqllite.size=1Gi"}, "sqllite"},
		{"typo/network-peer", []string{"--set", "broker.allowedClients[0].podSelectr.app=ci"}, "podSelectr"},
		{"required/cert-manager-issuer", []string{"--set", "tls.source=certManager"}, "/tls/certManager/issuerRef/name"},
		{"required/postgres-secret", []string{"--set", "audit.store=postgres"}, "/audit/postgres/existingSecret"},
		{"required/postgres-shared-checkpoint-key", []string{"--set", "audit.store=postgres,audit.postgres.existingSecret=pg"}, "/audit/checkpointKey/existingSecret"},
		{"required/broker-postgres-secret", []string{"--set", "broker.state.driver=postgres"}, "/broker/state/postgres/existingSecret"},
		{"unsafe/broker-autoscaling-with-per-pod-revocations", []string{"--set", "broker.autoscaling.enabled=true"}, "broker.autoscaling.enabled: needs broker.state.driver=postgres"},
		{"unsafe/keyguard-autoscaling-with-per-pod-grants", []string{"--set", "keyguard.autoscaling.enabled=true"}, "keyguard.autoscaling.enabled: needs keyguard.state.driver=postgres and keyguard.backend=awskms"},
		{"required/keyguard-postgres-secret", []string{"--set", "keyguard.state.driver=postgres"}, "/keyguard/state/postgres/existingSecret"},
		{"attack/secret-env-value", []string{"--set", "audit.extraEnv[0].name=PGPASSWORD,audit.extraEnv[0].value=x"}, "audit.extraEnv[0] (PGPASSWORD): looks secret"},
		{"required/read-principals-empty", []string{"--set", "audit.readPrincipals={}"}, "/audit/readPrincipals"},
		{"required/read-principals-null", []string{"--set", "audit.readPrincipals=null"}, "audit.readPrincipals: required"},
		{"required/policy", []string{"--set", "broker.policy="}, "/broker"},
		{"required/keyring", []string{"--set", "keyguard.keyring="}, "/keyguard"},
		{"conflict/grpc-probe-on-mtls-port", []string{"--set", "probes.mode=grpc,probes.grpcPort=8443"}, "probes.grpcPort: must differ"},
		{"conflict/servicemonitor-without-metrics", []string{"--set", "metrics.serviceMonitor.enabled=true"}, "metrics.serviceMonitor.enabled"},
		{"conflict/metrics-on-grpc-port", []string{"--set", "metrics.enabled=true,metrics.port=8443"}, "metrics.port: must differ"},
		{"conflict/public-port-is-grpc-port", []string{"--set", "publicPort=8443"}, "publicPort: must differ from grpcPort"},
		{"conflict/metrics-on-public-port", []string{"--set", "metrics.enabled=true,metrics.port=8444"}, "metrics.port: must differ from publicPort"},
		{"required/public-host", []string{"--set", "broker.public.enabled=true"}, "broker.public.host: required"},
		{"required/public-issuer", []string{"--set", "broker.public.enabled=true,broker.public.host=ci.example.com"}, "broker.public.tls.issuerRef.name: required"},
		{"required/keyguard-public-needs-issuers", []string{"--set", "keyguard.public.enabled=true,keyguard.public.host=kg.example.com,keyguard.public.tls.source=existingSecret"}, "keyguard.oidc.issuers: required with keyguard.public.enabled"},
		{"required/keyguard-oidc-audience", []string{"--set", "keyguard.oidc.issuers={https://issuer.example.com}"}, "keyguard.oidc.audience: required"},
		{"pattern/keyguard-issuer-http-off-loopback", []string{"--set", "keyguard.oidc.issuers={http://127.0.0.1.evil.example},keyguard.oidc.audience=kg"}, "/keyguard/oidc/issuers/0"},
		{"required/awskms-ring-key", []string{"--set", "keyguard.backend=awskms"}, "rings[0] (confidential/eu-west-1): kms_key required with keyguard.backend=awskms"},
		{"required/egress-to-postgres", []string{"--set", "broker.state.driver=postgres,broker.state.postgres.existingSecret=pg"}, "networkPolicy.egress.postgres: required"},
		{"enum/public-service-type", []string{"--set", "broker.public.service.type=NodePort"}, "/broker/public/service/type"},
		{"pattern/public-host", []string{"--set", "broker.public.host=Not A Host"}, "/broker/public/host"},
		{"pattern/admin-principal-without-path", []string{"--set", "broker.adminPrincipals[0]=spiffe://prod.example.com"}, "/broker/adminPrincipals/0"},
		{"typo/public", []string{"--set", "broker.public.hots=x"}, "hots"},
		{"pattern/audit-zone-name", []string{"--set", "audit.zones[0].name=EU,audit.zones[0].target=a:1,audit.zones[0].to[0].ipBlock.cidr=10.0.0.0/8"}, "/audit/zones/0/name"},
		{"reserved/audit-zone-global", []string{"--set", "audit.zones[0].name=global,audit.zones[0].target=a:1,audit.zones[0].to[0].ipBlock.cidr=10.0.0.0/8"}, "/audit/zones/0/name"},
		{"pattern/audit-zone-target-without-port", []string{"--set", "audit.zones[0].name=eu,audit.zones[0].target=audit.eu,audit.zones[0].to[0].ipBlock.cidr=10.0.0.0/8"}, "/audit/zones/0/target"},
		{"required/audit-zone-egress", []string{"--set", "audit.zones[0].name=eu,audit.zones[0].target=audit.eu:8443"}, "audit.zones[0].to: required"},
		{"conflict/audit-zone-twice", []string{"--set", "audit.zones[0].name=eu,audit.zones[0].target=a:1,audit.zones[0].to[0].ipBlock.cidr=10.0.0.0/8,audit.zones[1].name=eu,audit.zones[1].target=b:1,audit.zones[1].to[0].ipBlock.cidr=10.0.0.0/8"}, "zone eu listed twice"},
		{"pattern/keyguard-residency-zone", []string{"--set", "keyguard.residencyZones[0]=eu-west-1"}, "/keyguard/residencyZones/0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, ok := helmTemplate(t, tc.args...)
			if ok {
				t.Fatalf("helm template %v succeeded; want a failure naming %q", tc.args, tc.wantStderr)
			}
			if !strings.Contains(stderr, tc.wantStderr) {
				t.Errorf("stderr does not name %q:\n%s", tc.wantStderr, stderr)
			}
		})
	}
}

func TestWorkloadShapes(t *testing.T) {
	def := render(t)
	prod := render(t, productionValues...)
	two := 2
	one := 1
	tests := []struct {
		name         string
		ms           manifests
		component    string
		wantKind     string
		wantReplicas *int
		wantPVC      bool
		wantHPA      bool
	}{
		{"default/audit-sqlite-statefulset", def, "audit", "StatefulSet", &one, true, false},
		{"default/broker-sqlite-statefulset", def, "broker", "StatefulSet", &one, true, false},
		{"default/keyguard-statefulset", def, "keyguard", "StatefulSet", &one, true, false},
		{"production/audit-postgres-deployment", prod, "audit", "Deployment", &two, false, false},
		{"production/broker-postgres-deployment-hpa", prod, "broker", "Deployment", nil, false, true},
		{"production/keyguard-postgres-awskms-deployment-autoscaled", prod, "keyguard", "Deployment", nil, false, true},
		{"keyguard-postgres-local-keystore-stays-statefulset", render(t, "--set", "keyguard.state.driver=postgres,keyguard.state.postgres.existingSecret=pg,networkPolicy.egress.postgres[0].ipBlock.cidr=10.0.0.0/8"), "keyguard", "StatefulSet", &one, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, w := tc.ms.workload(t, tc.component)
			if o.Kind != tc.wantKind {
				t.Errorf("kind %s, want %s", o.Kind, tc.wantKind)
			}
			if diff := cmp.Diff(w.Replicas, tc.wantReplicas); diff != "" {
				t.Errorf("replicas (-got +want):\n%s", diff)
			}
			if got := len(w.VolumeClaimTemplates) > 0; got != tc.wantPVC {
				t.Errorf("volume claim = %v, want %v", got, tc.wantPVC)
			}
			hpas := 0
			for _, h := range tc.ms.ofKind("HorizontalPodAutoscaler") {
				if h.Metadata.Name == name(tc.component) {
					hpas++
				}
			}
			if got := hpas == 1; got != tc.wantHPA {
				t.Errorf("HPA = %v, want %v", got, tc.wantHPA)
			}
			if len(tc.ms.ofKind("PodDisruptionBudget")) != 3 {
				t.Errorf("want a PodDisruptionBudget per service")
			}
		})
	}
}

// configOf parses a component's rendered config file.
func configOf(t *testing.T, ms manifests, component string) map[string]any {
	t.Helper()
	var c map[string]any
	if err := yaml.Unmarshal([]byte(ms.get(t, "ConfigMap", name(component)+"-config").Data["config.yaml"]), &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestIdentitiesCertificatesAndIRSA(t *testing.T) {
	prod := render(t, productionValues...)
	def := render(t)
	id := func(td, component string) string {
		return "spiffe://" + td + "/ns/" + namespace + "/sa/" + name(component)
	}
	auditHost := name("audit") + "." + namespace + ".svc"

	t.Run("audit-appenders-are-broker-and-keyguard", func(t *testing.T) {
		got := configOf(t, prod, "audit")["append_principals"]
		want := []any{id("prod.example.com", "broker"), id("prod.example.com", "keyguard")}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("append_principals (-got +want):\n%s", diff)
		}
	})
	t.Run("callers-verify-audit-by-its-service-name", func(t *testing.T) {
		// Production runs audit replicas on PostgreSQL: callers resolve
		// every replica (headless Service) and verify the service name.
		for _, c := range []string{"broker", "keyguard"} {
			audit, _ := configOf(t, prod, c)["audit"].(map[string]any)
			got := []any{audit["target"], audit["server_name"]}
			want := []any{"dns:///" + name("audit") + "-replicas." + namespace + ".svc:8443", auditHost}
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("%s audit (target, server_name) (-got +want):\n%s", c, diff)
			}
			audit, _ = configOf(t, def, c)["audit"].(map[string]any)
			if got, want := audit["target"], auditHost+":8443"; got != want {
				t.Errorf("default values: %s audit.target = %v, want %v", c, got, want)
			}
		}
	})
	t.Run("servers-require-client-certificates", func(t *testing.T) {
		for _, c := range components {
			srv, _ := configOf(t, def, c)["server"].(map[string]any)
			tls, _ := srv["tls"].(map[string]any)
			if tls["client_ca_file"] == nil || srv["dev_plaintext"] != nil {
				t.Errorf("%s: server config is not mTLS: %v", c, srv)
			}
		}
	})
	t.Run("cert-manager-certificates", func(t *testing.T) {
		type certSpec struct {
			SecretName string   `json:"secretName"`
			DNSNames   []string `json:"dnsNames"`
			URIs       []string `json:"uris"`
			Usages     []string `json:"usages"`
			IssuerRef  struct {
				Name string `json:"name"`
				Kind string `json:"kind"`
			} `json:"issuerRef"`
		}
		for _, c := range components {
			s := decodeSpec[certSpec](t, prod.get(t, "Certificate", name(c)))
			if diff := cmp.Diff(s.URIs, []string{id("prod.example.com", c)}); diff != "" {
				t.Errorf("%s URI SANs (-got +want):\n%s", c, diff)
			}
			if !slices.Contains(s.DNSNames, name(c)+"."+namespace+".svc") {
				t.Errorf("%s DNS names %v lack the service name the probes and callers verify", c, s.DNSNames)
			}
			if !slices.Contains(s.Usages, "client auth") || !slices.Contains(s.Usages, "server auth") {
				t.Errorf("%s usages %v: need server and client auth", c, s.Usages)
			}
			if s.IssuerRef.Name != "credmatrix-ca" || s.IssuerRef.Kind != "ClusterIssuer" {
				t.Errorf("%s issuerRef %+v", c, s.IssuerRef)
			}
			_, w := prod.workload(t, c)
			found := false
			for _, v := range w.Template.Spec.Volumes {
				found = found || (v.Secret != nil && v.Secret.SecretName == s.SecretName)
			}
			if !found {
				t.Errorf("%s does not mount its certificate's Secret %s", c, s.SecretName)
			}
		}
		if n := len(def.ofKind("Certificate")); n != 0 {
			t.Errorf("default (existingSecrets) renders %d Certificates", n)
		}
	})
	t.Run("irsa-annotations", func(t *testing.T) {
		tests := []struct {
			ms        manifests
			component string
			want      string
		}{
			{prod, "broker", "arn:aws:iam::123456789012:role/credmatrix-broker"},
			{prod, "keyguard", "arn:aws:iam::123456789012:role/credmatrix-keyguard"},
			{prod, "audit", ""},
			{def, "broker", ""},
		}
		for _, tc := range tests {
			sa := tc.ms.get(t, "ServiceAccount", name(tc.component))
			if got := sa.Metadata.Annotations["eks.amazonaws.com/role-arn"]; got != tc.want {
				t.Errorf("%s role-arn = %q, want %q", tc.component, got, tc.want)
			}
			if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
				t.Errorf("%s ServiceAccount mounts an API token", tc.component)
			}
		}
	})
	t.Run("broker-postgres-dsn-by-secret-key-ref", func(t *testing.T) {
		_, w := prod.workload(t, "broker")
		env := w.Template.Spec.Containers[0].Env
		want := []envVar{{Name: "CREDMATRIX_BROKER_STATE_POSTGRES_DSN", ValueFrom: []byte(`{"secretKeyRef":{"key":"dsn","name":"credmatrix-broker-postgres"}}`)}}
		if diff := cmp.Diff(env, want); diff != "" {
			t.Errorf("broker env (-got +want):\n%s", diff)
		}
		state, _ := configOf(t, prod, "broker")["state"].(map[string]any)
		if diff := cmp.Diff(state, map[string]any{"driver": "postgres"}); diff != "" {
			t.Errorf("broker state config (-got +want):\n%s", diff)
		}
	})
	t.Run("postgres-dsn-and-checkpoint-key-from-secrets", func(t *testing.T) {
		_, w := prod.workload(t, "audit")
		var refs []string
		for _, v := range w.Template.Spec.Volumes {
			if v.Projected != nil {
				for _, s := range v.Projected.Sources {
					if s.Secret != nil {
						refs = append(refs, s.Secret.Name)
					}
				}
			}
		}
		if diff := cmp.Diff(refs, []string{"credmatrix-audit-postgres", "credmatrix-audit-checkpoint"}); diff != "" {
			t.Errorf("audit secret references (-got +want):\n%s", diff)
		}
		cp, _ := configOf(t, prod, "audit")["checkpoint"].(map[string]any)
		if diff := cmp.Diff(cp, map[string]any{"key_file": "/etc/credmatrix/keys/checkpoint-signing-key", "kept_file": "/var/lib/credmatrix/audit.kept"}); diff != "" {
			t.Errorf("audit checkpoint config (-got +want):\n%s", diff)
		}
	})
}

// TestREADMEInStepWithValues keeps the chart README's table of values and
// values.yaml the same set of keys.
func TestREADMEInStepWithValues(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	var want []string
	flattenKeys("", values, &want)
	sort.Strings(want)

	readme, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([^`]+)` \\|")
	var got []string
	for _, m := range row.FindAllStringSubmatch(string(readme), -1) {
		got = append(got, m[1])
	}
	sort.Strings(got)
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("README values table vs values.yaml keys (-README +values.yaml):\n%s", diff)
	}
}

// opaque values are documented as a whole, not key by key.
var opaque = map[string]bool{"resources": true, "annotations": true}

func flattenKeys(prefix string, v any, out *[]string) {
	m, ok := v.(map[string]any)
	last := prefix[strings.LastIndex(prefix, ".")+1:]
	if !ok || len(m) == 0 || opaque[last] {
		*out = append(*out, prefix)
		return
	}
	for k, child := range m {
		p := k
		if prefix != "" {
			p = prefix + "." + k
		}
		flattenKeys(p, child, out)
	}
}

// TestAuditZones: audit.zones names each zone's log to broker and keyguard
// (audit_zones), keyguard.residencyZones maps regions to zones, and egress
// to each zone's log is allowed to its peers on its port. Without zones
// (the default) neither setting is rendered: one log.
func TestAuditZones(t *testing.T) {
	ms := render(t, "--set", "audit.zones[0].name=eu,audit.zones[0].target=audit.eu.example.internal:9443,audit.zones[0].to[0].ipBlock.cidr=10.30.0.0/16",
		"--set", "audit.zones[1].name=us,audit.zones[1].target=audit.us.example.internal:8443,audit.zones[1].to[0].ipBlock.cidr=10.40.0.0/16",
		"--set", "keyguard.residencyZones={eu=eu-*,us=us-*}")
	config := func(ms manifests, c string) map[string]any {
		var cfg map[string]any
		if err := yaml.Unmarshal([]byte(ms.get(t, "ConfigMap", name(c)+"-config").Data["config.yaml"]), &cfg); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	wantZones := []any{"eu=audit.eu.example.internal:9443", "us=audit.us.example.internal:8443"}
	for _, c := range []string{"broker", "keyguard"} {
		if diff := cmp.Diff(config(ms, c)["audit_zones"], wantZones); diff != "" {
			t.Errorf("%s audit_zones (-got +want):\n%s", c, diff)
		}
	}
	if diff := cmp.Diff(config(ms, "keyguard")["residency_zones"], []any{"eu=eu-*", "us=us-*"}); diff != "" {
		t.Errorf("keyguard residency_zones (-got +want):\n%s", diff)
	}
	if _, ok := config(ms, "audit")["audit_zones"]; ok {
		t.Error("audit's own config names zone logs")
	}
	dns := rule{Ports: []string{"53/UDP", "53/TCP"}, From: []string{"ns:kubernetes.io/metadata.name=kube-system,pod:k8s-app=kube-dns"}}
	toAudit := rule{Ports: []string{"8443/TCP"}, From: []string{podPeer("audit")}}
	eu := rule{Ports: []string{"9443/TCP"}, From: []string{"ip:map[cidr:10.30.0.0/16]"}}
	us := rule{Ports: []string{"8443/TCP"}, From: []string{"ip:map[cidr:10.40.0.0/16]"}}
	if diff := cmp.Diff(egressRules(t, ms, "keyguard"), []rule{dns, toAudit, eu, us}); diff != "" {
		t.Errorf("keyguard egress (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(egressRules(t, ms, "audit"), []rule{dns}); diff != "" {
		t.Errorf("audit egress (-got +want):\n%s", diff)
	}

	def := render(t)
	for _, c := range []string{"broker", "keyguard"} {
		cfg := config(def, c)
		if _, ok := cfg["audit_zones"]; ok {
			t.Errorf("%s: audit_zones rendered without audit.zones", c)
		}
		if _, ok := cfg["residency_zones"]; ok {
			t.Errorf("%s: residency_zones rendered without keyguard.residencyZones", c)
		}
	}
}
