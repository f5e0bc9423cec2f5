// SPDX-License-Identifier: Apache-2.0
// SunPKCS11 client check: java SunPkcs11Check CONFIG PIN [SIGNATURES] [THREADS]
// Logs in, makes an EC P-256 session key pair on the PKCS#11 provider, signs SIGNATURES messages
// on one thread and SIGNATURES more over THREADS threads with SHA256withECDSA, and verifies every
// signature with the JDK's own SunEC provider. Exits 1 on any failure.
import java.nio.charset.StandardCharsets;
import java.security.KeyFactory;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.Provider;
import java.security.PublicKey;
import java.security.Security;
import java.security.Signature;
import java.security.spec.ECGenParameterSpec;
import java.security.spec.X509EncodedKeySpec;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

public final class SunPkcs11Check {
    private static final String ALG = "SHA256withECDSA";

    private SunPkcs11Check() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: SunPkcs11Check CONFIG PIN [SIGNATURES] [THREADS]");
            System.exit(2);
        }
        int count = args.length > 2 ? Integer.parseInt(args[2]) : 200;
        int threads = args.length > 3 ? Integer.parseInt(args[3]) : 4;

        Provider p11 = Security.getProvider("SunPKCS11").configure(args[0]);
        KeyStore ks = KeyStore.getInstance("PKCS11", p11);
        ks.load(null, args[1].toCharArray());
        System.out.println("provider " + p11.getName() + ", logged in, keystore entries: " + ks.size());

        KeyPairGenerator kpg = KeyPairGenerator.getInstance("EC", p11);
        kpg.initialize(new ECGenParameterSpec("secp256r1"));
        KeyPair kp = kpg.generateKeyPair();
        // Re-import through SunEC so verification cannot silently fall back to the token.
        PublicKey pub = KeyFactory.getInstance("EC", "SunEC")
                .generatePublic(new X509EncodedKeySpec(kp.getPublic().getEncoded()));
        PrivateKey priv = kp.getPrivate();
        System.out.println("generated " + priv.getAlgorithm() + " key pair on " + p11.getName()
                + " (private key class " + priv.getClass().getName() + ")");

        int failures = 0;

        if (verify(pub, "tamper-check".getBytes(StandardCharsets.UTF_8),
                sign(p11, priv, "tamper-check!".getBytes(StandardCharsets.UTF_8)))) {
            System.out.println("FAILURE: SunEC accepted a signature over a different message");
            failures++;
        }

        int single = 0;
        for (int i = 0; i < count; i++) {
            if (signAndVerify(p11, priv, pub, "single-" + i)) {
                single++;
            }
        }
        System.out.println("single thread: " + single + "/" + count + " signatures verified by SunEC");
        failures += count - single;

        AtomicInteger good = new AtomicInteger();
        AtomicInteger done = new AtomicInteger();
        ExecutorService pool = Executors.newFixedThreadPool(threads);
        List<Future<?>> futures = new ArrayList<>();
        for (int t = 0; t < threads; t++) {
            final int thread = t;
            final int share = count / threads + (t < count % threads ? 1 : 0);
            futures.add(pool.submit(() -> {
                for (int i = 0; i < share; i++) {
                    try {
                        if (signAndVerify(p11, priv, pub, "thread-" + thread + "-" + i)) {
                            good.incrementAndGet();
                        }
                    } catch (Exception e) {
                        System.out.println("FAILURE: thread " + thread + " message " + i + ": " + e);
                    }
                    done.incrementAndGet();
                }
            }));
        }
        pool.shutdown();
        if (!pool.awaitTermination(45, TimeUnit.SECONDS)) {
            System.out.println("FAILURE: signing threads did not finish within 45 s");
            pool.shutdownNow();
        }
        for (Future<?> f : futures) {
            if (f.isDone()) {
                f.get();
            }
        }
        System.out.println(threads + " threads: " + good.get() + "/" + count
                + " signatures verified by SunEC (" + done.get() + " attempted)");
        failures += count - good.get();

        System.out.println(failures == 0 ? "RESULT ok" : "RESULT " + failures + " failures");
        System.exit(failures == 0 ? 0 : 1);
    }

    private static boolean signAndVerify(Provider p11, PrivateKey priv, PublicKey pub, String text)
            throws Exception {
        byte[] msg = text.getBytes(StandardCharsets.UTF_8);
        byte[] sig;
        try {
            sig = sign(p11, priv, msg);
        } catch (Exception e) {
            System.out.println("FAILURE: signing '" + text + "': " + e);
            return false;
        }
        if (!verify(pub, msg, sig)) {
            System.out.println("FAILURE: SunEC rejected the signature over '" + text + "'");
            return false;
        }
        return true;
    }

    private static byte[] sign(Provider p11, PrivateKey priv, byte[] msg) throws Exception {
        Signature s = Signature.getInstance(ALG, p11);
        s.initSign(priv);
        s.update(msg);
        return s.sign();
    }

    private static boolean verify(PublicKey pub, byte[] msg, byte[] sig) throws Exception {
        Signature v = Signature.getInstance(ALG, "SunEC");
        v.initVerify(pub);
        v.update(msg);
        return v.verify(sig);
    }
}
