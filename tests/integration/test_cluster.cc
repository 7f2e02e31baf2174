#include "tests/integration/test_cluster.h"

#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "services/common/sharding.h"

namespace tokenmeter::integration {

void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) {
  context->set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
}

std::string TenantOwnedBy(std::string_view prefix, int32_t index, int32_t count) {
  std::string tenant(prefix);
  // Jump consistent hashing spreads names evenly, so a handful of tries always suffices.
  for (int i = 1; i < 10'000 && common::OwnerShard(tenant, count) != index; ++i) {
    tenant = absl::StrCat(std::string(prefix), "-", i);
  }
  return tenant;
}

TempDir::TempDir() {
  std::string pattern =
      (std::filesystem::path(testing::TempDir()) / "tokenmeter-integration-XXXXXX").string();
  if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

bool WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string staging = path + ".staging";
  {
    std::ofstream out(staging, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return false;
  }
  return std::rename(staging.c_str(), path.c_str()) == 0;
}

v1::UsageEvent MakeEvent(const EventSpec& spec) {
  v1::UsageEvent e;
  e.set_event_id(spec.id);
  e.set_tenant(spec.tenant);
  e.set_team(spec.team);
  e.set_user(spec.user);
  e.set_provider(spec.provider);
  e.set_model(spec.model);
  e.mutable_tokens()->set_input(spec.input);
  e.mutable_tokens()->set_cached_input(spec.cached_input);
  e.mutable_tokens()->set_output(spec.output);
  e.mutable_tokens()->set_reasoning(spec.reasoning);
  e.mutable_occurred_at()->set_seconds(absl::ToUnixSeconds(spec.at));
  return e;
}

v1::IngestBatch MakeBatch(std::string_view producer_id, uint64_t epoch, uint64_t seq,
                          std::vector<v1::UsageEvent> events) {
  v1::IngestBatch batch;
  batch.set_producer_id(std::string(producer_id));
  batch.set_epoch(epoch);
  batch.set_seq(seq);
  for (v1::UsageEvent& e : events) *batch.add_events() = std::move(e);
  return batch;
}

std::string RenderAck(const v1::IngestAck& ack) {
  return absl::StrCat("seq=", ack.seq(), " ", v1::IngestAck::Outcome_Name(ack.outcome()),
                      " expected=", ack.expected_seq(), " applied=", ack.applied_events(),
                      " dup=", ack.duplicate_events(), " rejected=", ack.rejected_events());
}

std::string RenderTotals(const v1::UsageTotals& t) {
  return absl::StrCat("in=", t.input_tokens(), " cached=", t.cached_input_tokens(),
                      " out=", t.output_tokens(), " reasoning=", t.reasoning_tokens(),
                      " total=", t.total_tokens(), " requests=", t.requests(),
                      " cost=", t.cost_micro_usd(), " unpriced=", t.unpriced_requests());
}

std::string RenderSeries(const v1::GetUsageResponse& response) {
  return absl::StrJoin(response.points(), " | ", [](std::string* out, const v1::UsagePoint& p) {
    absl::StrAppend(
        out,
        absl::FormatTime("%Y-%m-%dT%H:%M:%S", absl::FromUnixSeconds(p.window_start().seconds()),
                         absl::UTCTimeZone()),
        " ", RenderTotals(p.totals()));
  });
}

std::string RenderSpenders(const v1::TopSpendersResponse& response) {
  return absl::StrJoin(response.spenders(), ", ", [](std::string* out, const v1::Spender& s) {
    std::vector<std::string> parts;
    if (!s.scope().team().empty()) parts.push_back("team=" + s.scope().team());
    if (!s.scope().user().empty()) parts.push_back("user=" + s.scope().user());
    if (!s.scope().api_key().empty()) parts.push_back("api_key=" + s.scope().api_key());
    if (!s.scope().model().empty()) parts.push_back("model=" + s.scope().model());
    absl::StrAppend(out, absl::StrJoin(parts, "/"), ":", s.value());
  });
}

v1::TokenCounts Tokens(uint64_t input, uint64_t output, uint64_t cached_input) {
  v1::TokenCounts t;
  t.set_input(input);
  t.set_output(output);
  t.set_cached_input(cached_input);
  return t;
}

bool PollUntil(const std::function<bool()>& condition, absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

IngestStream::IngestStream(v1::IngestService::Stub* stub, absl::Duration deadline) {
  SetDeadline(&context_, deadline);
  stream_ = stub->Ingest(&context_);
}

IngestStream::~IngestStream() {
  if (finished_) return;
  context_.TryCancel();
  stream_->Finish().ok();  // Cancelled on purpose; the status says so.
}

bool IngestStream::Send(const v1::IngestBatch& batch) { return stream_->Write(batch); }

std::optional<v1::IngestAck> IngestStream::Read() {
  v1::IngestAck ack;
  if (!stream_->Read(&ack)) return std::nullopt;
  return ack;
}

v1::IngestAck IngestStream::SendAndRead(const v1::IngestBatch& batch) {
  if (!Send(batch)) return v1::IngestAck();
  return Read().value_or(v1::IngestAck());
}

grpc::Status IngestStream::Finish() {
  stream_->WritesDone();
  v1::IngestAck ignored;
  // Drain acks the caller did not read; bounded by the stream's deadline.
  while (stream_->Read(&ignored)) {
  }
  finished_ = true;
  return stream_->Finish();
}

TestShard::TestShard(Options options)
    : options_(std::move(options)),
      data_dir_(dir_.path() + "/data"),
      policy_path_(dir_.path() + "/policies.yaml"),
      clock_(options_.start_time) {
  if (!dir_.path().empty()) WriteFileAtomically(policy_path_, options_.policy_yaml);
}

TestShard::~TestShard() { Stop(); }

absl::Status TestShard::Start() {
  if (dir_.path().empty()) return absl::InternalError("cannot create a temporary directory");
  if (server_ != nullptr) return absl::FailedPreconditionError("already started");
  aggregator::ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.data_dir = data_dir_;
  options.shard = {options_.shard_index, options_.shard_count};
  options.policy_file = policy_path_;
  options.policy_poll_interval = options_.policy_poll_interval;
  options.ingest.max_events_per_batch = options_.max_batch_events;
  options.workers = 4;
  auto server = aggregator::AggregatorServer::Start(options, &clock_);
  if (!server.ok()) return server.status();
  server_ = *std::move(server);
  channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()),
                                 grpc::InsecureChannelCredentials());
  ingest_ = v1::IngestService::NewStub(channel_);
  quota_ = v1::QuotaService::NewStub(channel_);
  usage_ = v1::UsageService::NewStub(channel_);
  admin_ = v1::AdminService::NewStub(channel_);
  return absl::OkStatus();
}

void TestShard::Stop(absl::Duration grace) {
  if (server_ == nullptr) return;
  server_->Shutdown(grace);
  server_.reset();
}

bool TestShard::RewritePolicyFile(const std::string& yaml) {
  return WriteFileAtomically(policy_path_, yaml);
}

}  // namespace tokenmeter::integration
