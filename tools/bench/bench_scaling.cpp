// SPDX-License-Identifier: Apache-2.0
// `scaling`: ECDSA P-256 signing throughput through p11ha over 1, 2 and 3 `p11-kit server`
// members that sit behind a delaying relay, as network HSMs sit behind a network (this kernel
// has no netem). A p11-kit member serves one request at a time per connection, so the
// reference is what the same members give independent direct clients, one per member, running
// at the same time: on a 2-core machine that aggregate is the ceiling, not N times one member.
// `relay` is the relay: it holds every chunk a client sends for --delay-us before passing it on.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "bench_common.h"

namespace p11ha::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kClusterLabel = "ha-bench";
constexpr const char* kClientModule = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
constexpr int kMembers = 3;

// ---- the relay ----

int Listen(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (fd < 0 || path.size() >= sizeof address.sun_path) throw std::runtime_error("relay: bad socket " + path);
  std::strcpy(address.sun_path, path.c_str());
  unlink(path.c_str());
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 || listen(fd, 64) != 0)
    throw std::runtime_error("relay: cannot listen on " + path + ": " + std::strerror(errno));
  return fd;
}

int Connect(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strcpy(address.sun_path, path.c_str());
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  return fd;
}

bool WriteAll(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    ssize_t n = send(fd, data, size, MSG_NOSIGNAL);
    if (n <= 0) return false;
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  return true;
}

// One direction of one connection. The reader stamps each chunk on arrival and the writer sends
// it `delay` later, so a request split over several reads is delayed once, not once per read.
void Pump(int from, int to, std::chrono::microseconds delay) {
  struct Chunk {
    Clock::time_point due;
    std::string bytes;
  };
  std::mutex mutex;
  std::condition_variable ready;
  std::deque<Chunk> queue;
  bool ended = false;
  std::thread writer([&] {
    std::unique_lock lock(mutex);
    for (;;) {
      ready.wait(lock, [&] { return ended || !queue.empty(); });
      if (queue.empty()) break;
      Chunk chunk = std::move(queue.front());
      queue.pop_front();
      lock.unlock();
      std::this_thread::sleep_until(chunk.due);
      bool sent = WriteAll(to, chunk.bytes.data(), chunk.bytes.size());
      lock.lock();
      if (!sent) break;
    }
    shutdown(to, SHUT_WR);
  });
  char buffer[65536];
  for (ssize_t n; (n = recv(from, buffer, sizeof buffer, 0)) > 0;) {
    std::lock_guard lock(mutex);
    queue.push_back({Clock::now() + delay, std::string(buffer, static_cast<std::size_t>(n))});
    ready.notify_one();
  }
  {
    std::lock_guard lock(mutex);
    ended = true;
    ready.notify_one();
  }
  writer.join();
}

int Relay(const std::string& listen_path, const std::string& target, int delay_us) {
  signal(SIGPIPE, SIG_IGN);
  const int listener = Listen(listen_path);
  const std::chrono::microseconds delay(delay_us);
  for (;;) {
    int client = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    std::thread([client, target, delay] {
      int server = Connect(target);
      if (server >= 0) {
        // Requests are delayed on their way in; answers come straight back.
        std::thread back(Pump, server, client, std::chrono::microseconds(0));
        Pump(client, server, delay);
        back.join();
        close(server);
      }
      close(client);
    }).detach();
  }
}

// ---- the orchestration ----

// A process that runs until this object goes (servers, relays) or is waited for (clients).
class Child {
 public:
  Child(const std::vector<std::string>& argv, const Env& env, const fs::path& output) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, output.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawnattr_t attributes;
    posix_spawnattr_init(&attributes);
    // Its own process group: p11-kit server forks a process per connection, and they go too.
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attributes, 0);
    try {
      pid_ = Spawn(argv, env, &actions, &attributes);
    } catch (const std::runtime_error&) {
      posix_spawn_file_actions_destroy(&actions);
      posix_spawnattr_destroy(&attributes);
      throw;
    }
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
  }
  ~Child() {
    if (pid_ <= 0) return;
    kill(-pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  bool Wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }

 private:
  pid_t pid_ = -1;
};

void WaitForSocket(const fs::path& path) {
  for (int i = 0; i < 500; ++i) {
    if (fs::exists(path)) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  throw std::runtime_error(path.string() + " did not appear in 5 s");
}

struct ScalingOptions {
  std::vector<int> members = {1, 2, 3};
  std::vector<int> threads = {4, 16};
  int rounds = 5;
  double seconds = 3;
  int delay_us = 2000;
  std::string softhsm = kSoftHsmModule;
  std::string p11ha = P11HA_MODULE_PATH;
  std::string cli = P11HA_CLI_PATH;
  std::string out;
};

std::string Slurp(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

double OpsPerSecond(const fs::path& output, const std::string& what) {
  auto fields = ParseLine(Slurp(output));
  if (Field(fields, "errors") != "0") throw std::runtime_error(what + ": " + fields["errors"] + " errors, the first " + fields["first_error"]);
  return std::stod(Field(fields, "operations")) / std::stod(Field(fields, "seconds"));
}

std::vector<std::string> MeasureArgs(const std::string& self, const std::string& module, const std::string& token,
                                     const Farm& farm, int threads, double seconds) {
  return {self, "measure", "--module", module, "--token", token, "--pin-file", farm.pin_file.string(), "--op",
          "ecdsa-p256", "--threads", std::to_string(threads), "--seconds", Fixed(seconds, 3)};
}

// Independent direct clients, one per member, each with its share of the threads, all at once.
double DirectAggregate(const std::string& self, const ScalingOptions& options, const Farm& farm,
                       const fs::path& dir, int members, int threads) {
  std::vector<std::unique_ptr<Child>> clients;
  for (int i = 1; i <= members; ++i) {
    // The same number of threads in all as p11ha gets, spread as evenly as it goes.
    const int each = std::max(1, threads / members + (i <= threads % members ? 1 : 0));
    Env env = farm.env();
    env["P11_KIT_SERVER_ADDRESS"] = "unix:path=" + (dir / ("relay-" + std::to_string(i) + ".sock")).string();
    clients.push_back(std::make_unique<Child>(
        MeasureArgs(self, kClientModule, "s" + std::to_string(i), farm, each, options.seconds), env,
        dir / ("direct-" + std::to_string(i) + ".out")));
  }
  double total = 0;
  for (int i = 1; i <= members; ++i) {
    if (!clients[i - 1]->Wait()) throw std::runtime_error("a direct client over member " + std::to_string(i) + " failed");
    total += OpsPerSecond(dir / ("direct-" + std::to_string(i) + ".out"), "direct client " + std::to_string(i));
  }
  return total;
}

double ThroughP11ha(const std::string& self, const ScalingOptions& options, const Farm& farm, const fs::path& dir,
                    int members, int threads) {
  Env env = farm.env();
  env["P11HA_CONFIG"] = (dir / ("remote-" + std::to_string(members) + ".toml")).string();
  Child client(MeasureArgs(self, options.p11ha, kClusterLabel, farm, threads, options.seconds), env,
               dir / "p11ha.out");
  if (!client.Wait()) throw std::runtime_error("p11ha over " + std::to_string(members) + " members failed");
  return OpsPerSecond(dir / "p11ha.out", "p11ha");
}

void WriteRemoteConfig(const fs::path& path, const fs::path& dir, int members) {
  std::ofstream out(path);
  out << "[cluster]\nlabel = \"" << kClusterLabel << "\"\nslot_id = 0\n\n";
  for (int i = 1; i <= members; ++i)
    out << "[[member]]\nname = \"hsm-" << i << "\"\nremote = \"unix:path=" << (dir / ("relay-" + std::to_string(i) + ".sock")).string()
        << "\"\ntoken = \"pkcs11:token=s" << i << "\"\n\n";
  out << "[log]\nlevel = \"warn\"\nfile = \"" << (dir / "p11ha.log").string() << "\"\n";
}

int Scaling(const ScalingOptions& options, const std::string& self) {
  TempDir temp;
  const fs::path& dir = temp.path();
  const Farm farm = MakeFarm(dir);
  std::vector<MemberSpec> specs;
  for (int i = 1; i <= kMembers; ++i) {
    InitToken(farm, "s" + std::to_string(i));
    specs.push_back({"hsm-" + std::to_string(i), "s" + std::to_string(i)});
  }
  // The signing key is made through p11ha over the tokens as module members, so that every
  // member holds the same key (p11-kit 0.24's remote protocol carries no AES key wrap).
  const fs::path local = dir / "local.toml";
  WriteConfig(local, kClusterLabel, specs, options.softhsm, dir / "stage.log");
  CreateDomain(options.cli, farm, local, dir / "shares");
  Env stage_env = farm.env();
  stage_env["P11HA_CONFIG"] = local.string();
  Run({self, "stage", "--module", options.p11ha, "--token", kClusterLabel, "--pin-file", farm.pin_file.string()},
      stage_env);

  std::vector<std::unique_ptr<Child>> daemons;
  for (int i = 1; i <= kMembers; ++i) {
    const std::string n = std::to_string(i);
    daemons.push_back(std::make_unique<Child>(
        std::vector<std::string>{"p11-kit", "server", "-f", "--provider", options.softhsm, "-n",
                                 (dir / ("server-" + n + ".sock")).string(), "pkcs11:token=s" + n},
        farm.env(), dir / ("server-" + n + ".log")));
    WaitForSocket(dir / ("server-" + n + ".sock"));
    daemons.push_back(std::make_unique<Child>(
        std::vector<std::string>{self, "relay", "--listen", (dir / ("relay-" + n + ".sock")).string(), "--to",
                                 (dir / ("server-" + n + ".sock")).string(), "--delay-us",
                                 std::to_string(options.delay_us)},
        Env{}, dir / ("relay-" + n + ".log")));
    WaitForSocket(dir / ("relay-" + n + ".sock"));
  }
  for (int members : options.members) WriteRemoteConfig(dir / ("remote-" + std::to_string(members) + ".toml"), dir, members);

  std::ostringstream report;
  report << "| members | threads | p11ha ops/s | independent direct clients, aggregate ops/s | ratio |\n"
         << "|---|---|---|---|---|\n";
  for (int members : options.members) {
    for (int threads : options.threads) {
      std::vector<double> via, direct, ratio;
      for (int round = 0; round < options.rounds; ++round) {
        double p, d;
        if (round % 2 == 0) {
          p = ThroughP11ha(self, options, farm, dir, members, threads);
          d = DirectAggregate(self, options, farm, dir, members, threads);
        } else {
          d = DirectAggregate(self, options, farm, dir, members, threads);
          p = ThroughP11ha(self, options, farm, dir, members, threads);
        }
        via.push_back(p);
        direct.push_back(d);
        ratio.push_back(p / d);
      }
      report << "| " << members << " | " << threads << " | " << Fixed(Median(via), 0) << " | "
             << Fixed(Median(direct), 0) << " | " << Fixed(Median(ratio), 3) << " |\n";
      std::cerr << "p11ha-bench: scaling, " << members << " member(s), " << threads << " threads: ratio "
                << Fixed(Median(ratio), 3) << "\n";
    }
  }
  report << "\nECDSA P-256 signing, " << options.rounds << " alternating rounds of " << Fixed(options.seconds, 1)
         << " s; medians, ratio taken per round. Members: `p11-kit server` processes over SoftHSM tokens, each "
            "reached through a relay that holds every request for "
         << options.delay_us << " µs. Reference: one direct client (p11-kit-client.so) per member, each with "
            "its share of the threads, all running at the same time; their ops/s added.\n";
  Emit(report.str(), options.out);
  return 0;
}

}  // namespace

void RegisterScaling(CLI::App& app, Commands& commands) {
  auto options = std::make_shared<ScalingOptions>();
  auto* scaling = app.add_subcommand("scaling", "p11ha over 1-3 delayed p11-kit server members against direct clients");
  scaling->add_option("--members", options->members, "member counts")->delimiter(',');
  scaling->add_option("--threads", options->threads, "thread counts")->delimiter(',');
  scaling->add_option("--rounds", options->rounds, "alternating rounds per figure")->check(CLI::Range(1, 99));
  scaling->add_option("--seconds", options->seconds, "length of each run")->check(CLI::PositiveNumber);
  scaling->add_option("--delay-us", options->delay_us, "delay the relay adds to every request")->check(CLI::Range(0, 1000000));
  scaling->add_option("--softhsm", options->softhsm, "SoftHSM's module");
  scaling->add_option("--p11ha", options->p11ha, "libp11ha.so");
  scaling->add_option("--cli", options->cli, "the p11ha CLI");
  scaling->add_option("--out", options->out, "also write the table here");
  commands.emplace_back(scaling, [options](const std::string& self) { return Scaling(*options, self); });

  auto relay_options = std::make_shared<std::tuple<std::string, std::string, int>>();
  auto* relay = app.add_subcommand("relay", "a unix-socket relay that delays requests (used by scaling)");
  relay->add_option("--listen", std::get<0>(*relay_options))->required();
  relay->add_option("--to", std::get<1>(*relay_options))->required();
  relay->add_option("--delay-us", std::get<2>(*relay_options))->required();
  commands.emplace_back(relay, [relay_options](const std::string&) {
    return Relay(std::get<0>(*relay_options), std::get<1>(*relay_options), std::get<2>(*relay_options));
  });
}

}  // namespace p11ha::bench
