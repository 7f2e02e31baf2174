// tokenmeterctl against a real 3-shard cluster started in-process (port 0, temporary data):
// routing by tenant, output, the gRPC code name on errors, and the exit codes.
#include "services/ctl/ctl.h"

#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/common/sharding.h"
#include "tests/integration/test_cluster.h"

namespace tokenmeter::ctl {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kPolicies[] = R"(policies:
  - id: agents-day
    selector: {tenant: acme, team: agents}
    limits:
      - {metric: total_tokens, window: day, amount: 1000}
prices:
  version: 1
  models:
    - {provider: openai, model: gpt-4o, input: "2.50", cached_input: "1.25", output: "10.00"}
)";

struct Result {
  int code = -1;
  std::string out;
  std::string err;
};

class CtlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<std::string> addresses;
    for (int i = 0; i < 3; ++i) {
      integration::TestShard::Options options;
      options.shard_index = i;
      options.shard_count = 3;
      options.policy_yaml = kPolicies;
      options.start_time = absl::Now();  // The CLI's default time ranges use the real clock.
      shards_.push_back(std::make_unique<integration::TestShard>(options));
      const absl::Status started = shards_.back()->Start();
      ASSERT_TRUE(started.ok()) << started;
      addresses.push_back(absl::StrCat("127.0.0.1:", shards_.back()->server()->port()));
    }
    aggregators_ = absl::StrJoin(addresses, ",");
  }

  // Runs `tokenmeterctl --aggregators <cluster> <args...>`.
  Result Ctl(std::vector<std::string> args, const std::string& aggregators = "") {
    args.insert(args.begin(), {"tokenmeterctl", "--aggregators",
                               aggregators.empty() ? aggregators_ : aggregators, "--timeout", "5"});
    std::vector<const char*> argv;
    for (const std::string& a : args) argv.push_back(a.c_str());
    std::ostringstream out, err;
    Result r;
    r.code = RunCtl(static_cast<int>(argv.size()), argv.data(), out, err);
    r.out = out.str();
    r.err = err.str();
    return r;
  }

  std::vector<std::unique_ptr<integration::TestShard>> shards_;
  std::string aggregators_;
};

const std::vector<std::string> kAgentScope = {"--tenant", "acme",  "--team",     "agents",
                                              "--user",   "bot-1", "--provider", "openai",
                                              "--model",  "gpt-4o"};

std::vector<std::string> With(std::vector<std::string> head, const std::vector<std::string>& tail) {
  head.insert(head.end(), tail.begin(), tail.end());
  return head;
}

TEST_F(CtlTest, OwnerPrintsTheShardIndex) {
  const Result r = Ctl({"owner", "acme"});
  EXPECT_EQ(r.code, kExitOk);
  EXPECT_EQ(r.out, absl::StrCat(common::OwnerShard("acme", 3), "\n"));
}

TEST_F(CtlTest, HealthReportsEveryShardServing) {
  const Result r = Ctl({"health", "--wait", "10"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("shard 0"));
  EXPECT_THAT(r.out, HasSubstr("shard 2"));
  EXPECT_EQ(r.out.find("NOT_SERVING"), std::string::npos);
}

TEST_F(CtlTest, CheckExitsZeroWhenAllowedAndThreeWhenDenied) {
  Result r = Ctl(With({"check", "--input", "100", "--output", "50"}, kAgentScope));
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, StartsWith("ALLOWED"));
  EXPECT_THAT(r.out, HasSubstr("agents-day"));
  r = Ctl(With({"check", "--input", "5000"}, kAgentScope));
  EXPECT_EQ(r.code, kExitDenied);
  EXPECT_THAT(r.out, StartsWith("DENIED"));
  EXPECT_THAT(r.out, HasSubstr("EXCEEDED"));
}

TEST_F(CtlTest, ReserveCommitThenUsageAndTopShowTheActualTokens) {
  Result r =
      Ctl(With({"reserve", "--id", "r-1", "--input", "300", "--output", "200"}, kAgentScope));
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("reservation r-1 held until"));
  r = Ctl({"commit", "--tenant", "acme", "--id", "r-1", "--input", "300", "--output", "123"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out, "committed r-1\n");
  r = Ctl({"commit", "--tenant", "acme", "--id", "r-1", "--input", "300", "--output", "123"});
  EXPECT_THAT(r.out, HasSubstr("repeat of an earlier commit"));

  r = Ctl({"top", "--tenant", "acme"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("tenant=acme/team=agents"));
  EXPECT_THAT(r.out, HasSubstr("423"));  // total tokens = 300 + 123
  r = Ctl({"usage", "--tenant", "acme", "--team", "agents", "--granularity", "hour"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("423"));
  r = Ctl({"-o", "json", "top", "--tenant", "acme"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, StartsWith("{\"spenders\":"));

  r = Ctl(With({"reserve", "--id", "r-2", "--input", "10"}, kAgentScope));
  ASSERT_EQ(r.code, kExitOk) << r.err;
  r = Ctl({"release", "--tenant", "acme", "--id", "r-2"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_EQ(r.out, "released r-2\n");
}

TEST_F(CtlTest, PolicyOverridesCanBeUpsertedListedAndDeleted) {
  Result r =
      Ctl({"policies", "upsert", "--json",
           R"({"id":"acme-cap","selector":{"tenant":"acme"},"limits":[{"metric":"METRIC_REQUESTS",)"
           R"("window":"WINDOW_HOUR","amount":"5"}],"mode":"MODE_ENFORCE",)"
           R"("failure_mode":"FAILURE_MODE_OPEN"})"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  r = Ctl({"policies", "list", "--tenant", "acme"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("acme-cap"));
  EXPECT_THAT(r.out, HasSubstr("requests/hour<=5"));
  EXPECT_THAT(r.out, HasSubstr("agents-day"));
  r = Ctl({"policies", "delete", "--tenant", "acme", "--id", "acme-cap"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("deleted override acme-cap"));
}

TEST_F(CtlTest, PricesSetReachesEveryShard) {
  Result r =
      Ctl({"prices", "set", "--json",
           R"({"version":"7","prices":[{"provider":"openai","model":"gpt-4o",)"
           R"("input_per_mtok_micro_usd":"2000000","cached_input_per_mtok_micro_usd":"1000000",)"
           R"("output_per_mtok_micro_usd":"8000000"}]})"});
  ASSERT_EQ(r.code, kExitOk) << r.err;
  for (int shard = 0; shard < 3; ++shard) {
    r = Ctl({"prices", "get", "--shard", absl::StrCat(shard)});
    ASSERT_EQ(r.code, kExitOk) << r.err;
    EXPECT_THAT(r.out, HasSubstr("version 7"));
    EXPECT_THAT(r.out, HasSubstr("$8.000000"));
  }
}

TEST_F(CtlTest, RpcErrorsPrintTheCodeNameAndExitOne) {
  // The shards in the wrong order: the tenant's call lands on a shard that does not own it.
  std::vector<std::string> addresses;
  for (int i = 2; i >= 0; --i) {
    addresses.push_back(absl::StrCat("127.0.0.1:", shards_[i]->server()->port()));
  }
  Result r = Ctl({"top", "--tenant", "acme"}, absl::StrJoin(addresses, ","));
  EXPECT_EQ(r.code, kExitRpcError);
  EXPECT_THAT(r.err, HasSubstr("FAILED_PRECONDITION"));
  EXPECT_THAT(r.err, StartsWith("error: shard "));

  // Nothing listens on port 1.
  r = Ctl({"top", "--tenant", "acme"}, "127.0.0.1:1,127.0.0.1:1,127.0.0.1:1");
  EXPECT_EQ(r.code, kExitRpcError);
  EXPECT_THAT(r.err, HasSubstr("UNAVAILABLE"));
}

TEST_F(CtlTest, DeadLettersListsEventsRefusedAtIngest) {
  EXPECT_EQ(Ctl({"dead-letters"}).out, "no dead letters\n");
  integration::EventSpec bad;
  bad.id = "bad-event-1";
  bad.tenant = "acme";
  bad.cached_input = 500;  // More than input: malformed, kept as a dead letter.
  bad.at = absl::Now();
  integration::TestShard& owner = *shards_[common::OwnerShard("acme", 3)];
  integration::IngestStream stream(&owner.ingest());
  const v1::IngestAck ack =
      stream.SendAndRead(integration::MakeBatch("ctl-test", 1, 1, {integration::MakeEvent(bad)}));
  ASSERT_EQ(ack.rejected_events(), 1u) << integration::RenderAck(ack);
  const Result r = Ctl({"dead-letters", "--tenant", "acme"});
  EXPECT_EQ(r.code, kExitOk) << r.err;
  EXPECT_THAT(r.out, HasSubstr("bad-event-1"));
  EXPECT_THAT(r.out, HasSubstr("ctl-test"));
}

TEST_F(CtlTest, BadArgumentsExitTwo) {
  EXPECT_EQ(Ctl({"top"}).code, kExitUsage);  // --tenant is required.
  EXPECT_EQ(Ctl({"top", "--tenant", "acme", "--level", "galaxy"}).code, kExitUsage);
  EXPECT_EQ(Ctl({"owner", "acme"}, "not-an-address").code, kExitUsage);
  EXPECT_EQ(Ctl({"policies"}).code, kExitUsage);  // A policies subcommand is required.
}

}  // namespace
}  // namespace tokenmeter::ctl
