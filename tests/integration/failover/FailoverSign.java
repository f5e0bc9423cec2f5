// SPDX-License-Identifier: Apache-2.0
// SunPKCS11 under member failures, as an EJBCA-like consumer signs:
//   java FailoverSign CONFIG PIN ALIAS THREADS SECONDS SUMMARY SIGNATURES
// Loads the PKCS11 KeyStore once, takes ALIAS's private key, and signs random messages with
// SHA256withECDSA in THREADS threads, each with its own Signature object, for SECONDS.
// SunPKCS11 keeps its own session pool, so the sessions behind the threads are its choice, not
// ours. Every exception is counted and timed. SIGNATURES gets "<hex SHA-256(message)> <hex DER
// signature>" per success, for `failover_sign_load --verify` (OpenSSL; SunEC's pure-Java ECDSA
// would need longer than the run). The summary uses the keys of failover_sign_load (ops,
// errors, hung, max_gap_ms, "error ..." lines). Exit 0 only when nothing failed.
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.security.KeyStore;
import java.security.MessageDigest;
import java.security.PrivateKey;
import java.security.Provider;
import java.security.Security;
import java.security.Signature;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HexFormat;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;

public final class FailoverSign {
    private static final String ALG = "SHA256withECDSA";

    private static final class Worker extends Thread {
        final List<Long> successes = new ArrayList<>();
        final List<byte[]> messages = new ArrayList<>();
        final List<byte[]> signatures = new ArrayList<>();
        final List<String> errors = new ArrayList<>();
        double slowestMs;  // the slowest successful update + sign
        private final Provider p11;
        private final PrivateKey key;
        private final long deadline;
        volatile boolean done;

        Worker(Provider p11, PrivateKey key, long deadline) {
            this.p11 = p11;
            this.key = key;
            this.deadline = deadline;
            setDaemon(true);  // a hung call must not keep the JVM from reporting
        }

        @Override
        public void run() {
            Signature s = null;
            while (System.nanoTime() < deadline) {
                byte[] msg = new byte[32];
                ThreadLocalRandom.current().nextBytes(msg);
                long started = System.nanoTime();
                try {
                    if (s == null) {
                        s = Signature.getInstance(ALG, p11);
                        s.initSign(key);
                    }
                    s.update(msg);
                    byte[] sig = s.sign();
                    slowestMs = Math.max(slowestMs, (System.nanoTime() - started) / 1e6);
                    successes.add(System.currentTimeMillis());
                    messages.add(msg);
                    signatures.add(sig);
                } catch (Exception e) {
                    double took = (System.nanoTime() - started) / 1e6;
                    errors.add(String.format("error at_ms=%d thread=%s took_ms=%.1f exception=%s",
                            System.currentTimeMillis(), getName(), took, describe(e)));
                    s = null;  // after a failure SunPKCS11's Signature state is unknown
                    try {
                        Thread.sleep(10);
                    } catch (InterruptedException ie) {
                        return;
                    }
                }
            }
            done = true;
        }
    }

    private static String describe(Throwable e) {
        StringBuilder sb = new StringBuilder(e.toString().replace('\n', ' '));
        for (Throwable c = e.getCause(); c != null; c = c.getCause()) {
            sb.append(" <- ").append(c.toString().replace('\n', ' '));
        }
        return sb.toString();
    }

    // {length, from, to} of the longest stretch without a success in sorted `at`, the run's
    // edges included: a load that stops succeeding before its end has a gap too.
    private static long[] maxGap(List<Long> at, long startMs, long endMs) {
        long[] gap = {0, startMs, startMs};
        long previous = startMs;
        for (long t : at) {
            if (t - previous > gap[0]) gap = new long[] {t - previous, previous, t};
            previous = t;
        }
        if (endMs - previous > gap[0]) gap = new long[] {endMs - previous, previous, endMs};
        return gap;
    }

    private FailoverSign() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 7) {
            System.err.println("usage: FailoverSign CONFIG PIN ALIAS THREADS SECONDS SUMMARY SIGNATURES");
            System.exit(2);
        }
        int threads = Integer.parseInt(args[3]);
        int seconds = Integer.parseInt(args[4]);

        Provider p11 = Security.getProvider("SunPKCS11").configure(args[0]);
        KeyStore ks = KeyStore.getInstance("PKCS11", p11);
        ks.load(null, args[1].toCharArray());
        PrivateKey key = (PrivateKey) ks.getKey(args[2], null);
        if (key == null) {
            System.err.println("FailoverSign: no private key entry '" + args[2] + "' (aliases: "
                    + Collections.list(ks.aliases()) + ")");
            System.exit(2);
        }
        System.out.println("java load: alias " + args[2] + ", " + threads + " threads, " + seconds + " s");

        long startMs = System.currentTimeMillis();
        long deadline = System.nanoTime() + seconds * 1_000_000_000L;
        List<Worker> workers = new ArrayList<>();
        for (int t = 0; t < threads; t++) {
            Worker w = new Worker(p11, key, deadline);
            w.setName("t" + t);
            workers.add(w);
            w.start();
        }
        long giveUp = deadline + 10_000_000_000L;
        for (Worker w : workers) {
            w.join(Math.max(1, (giveUp - System.nanoTime()) / 1_000_000));
        }

        MessageDigest sha256 = MessageDigest.getInstance("SHA-256");
        HexFormat hex = HexFormat.of();
        List<String> signatureLines = new ArrayList<>();
        List<Long> all = new ArrayList<>();
        List<String> lines = new ArrayList<>();
        List<String> errorLines = new ArrayList<>();
        long ops = 0, errors = 0, hung = 0;
        double slowest = 0;
        for (Worker w : workers) {
            if (!w.done) {
                hung++;
                lines.add("hung." + w.getName() + "=still in a call");
                continue;
            }
            for (int i = 0; i < w.successes.size(); i++) {
                signatureLines.add(hex.formatHex(sha256.digest(w.messages.get(i))) + " "
                        + hex.formatHex(w.signatures.get(i)));
            }
            ops += w.successes.size();
            slowest = Math.max(slowest, w.slowestMs);
            errors += w.errors.size();
            all.addAll(w.successes);
            errorLines.addAll(w.errors);
            lines.add(w.getName() + "=ops " + w.successes.size() + " errors " + w.errors.size());
        }
        Collections.sort(all);
        long endMs = startMs + seconds * 1000L;
        long[] gap = maxGap(all, startMs, endMs);
        // Merged over all threads, one thread stuck in a frozen member hides behind the others.
        long[] threadGap = {0, startMs, startMs};
        String threadGapName = "-";
        for (Worker w : workers) {
            if (!w.done) continue;
            long[] own = maxGap(w.successes, startMs, endMs);
            if (own[0] > threadGap[0]) { threadGap = own; threadGapName = w.getName(); }
        }

        List<String> out = new ArrayList<>();
        out.add("mode=java");
        out.add("threads=" + threads);
        out.add("start_ms=" + startMs);
        out.add("end_ms=" + endMs);
        out.add("ops=" + ops);
        out.add("errors=" + errors);
        out.add("hung=" + hung);
        out.add("max_gap_ms=" + gap[0]);
        out.add("max_gap_from_ms=" + gap[1]);
        out.add("max_gap_to_ms=" + gap[2]);
        out.add("thread_max_gap_ms=" + threadGap[0]);
        out.add("thread_max_gap_thread=" + threadGapName);
        out.add("thread_max_gap_from_ms=" + threadGap[1]);
        out.add("thread_max_gap_to_ms=" + threadGap[2]);
        out.add(String.format("slowest_success_ms=%.1f", slowest));
        out.addAll(lines);
        out.addAll(errorLines);
        Files.write(Paths.get(args[6]), signatureLines, StandardCharsets.UTF_8);
        Files.write(Paths.get(args[5]), out, StandardCharsets.UTF_8);
        PrintWriter console = new PrintWriter(System.out, true);
        int shown = 0;
        for (String line : out) {
            if (line.startsWith("error ") && ++shown > 12) continue;
            console.println(line);
        }
        if (shown > 12) console.println("(" + (shown - 12) + " more error lines in the summary file)");
        System.exit(ops > 0 && errors == 0 && hung == 0 ? 0 : 1);
    }
}
