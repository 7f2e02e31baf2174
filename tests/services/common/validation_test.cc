#include "services/common/validation.h"

#include <string>

#include "gtest/gtest.h"

namespace tokenmeter::common {
namespace {

TEST(ValidationTest, AcceptsIdentifiersOfTheirCharset) {
  EXPECT_TRUE(ValidateId(IdKind::kTenant, "tenant", "acme-corp_1.eu").ok());
  EXPECT_TRUE(ValidateId(IdKind::kUser, "user", "bob+ci@acme.com").ok());
  EXPECT_TRUE(ValidateId(IdKind::kModel, "model", "anthropic/claude-3.5:latest").ok());
  EXPECT_TRUE(ValidateId(IdKind::kProvider, "provider", "openai").ok());
}

TEST(ValidationTest, RejectsEmptyAndTooLongNamingTheField) {
  auto empty = ValidateId(IdKind::kTenant, "scope.tenant", "");
  EXPECT_EQ(empty.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(empty.message()).find("scope.tenant"), std::string::npos);
  EXPECT_FALSE(ValidateId(IdKind::kTenant, "tenant", std::string(65, 'a')).ok());
  EXPECT_TRUE(ValidateId(IdKind::kTenant, "tenant", std::string(64, 'a')).ok());
  EXPECT_FALSE(ValidateId(IdKind::kUser, "user", std::string(129, 'a')).ok());
}

TEST(ValidationTest, RejectsBytesOutsideTheCharsetWithTheirOffset) {
  auto s = ValidateId(IdKind::kTenant, "tenant", "ac me");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("0x20 at offset 2"), std::string::npos) << s;
  EXPECT_FALSE(ValidateId(IdKind::kTenant, "tenant", std::string("a\0b", 3)).ok());
  EXPECT_FALSE(ValidateId(IdKind::kTenant, "tenant", "caf\xc3\xa9").ok());
  EXPECT_FALSE(ValidateId(IdKind::kTeam, "team", "a/b").ok());  // '/' only in models, ids.
  EXPECT_FALSE(ValidateId(IdKind::kProvider, "provider", "OpenAI").ok());  // Lower case only.
}

TEST(ValidationTest, OptionalIdsAcceptEmpty) {
  EXPECT_TRUE(ValidateOptionalId(IdKind::kApiKey, "api_key", "").ok());
  EXPECT_FALSE(ValidateOptionalId(IdKind::kApiKey, "api_key", "bad key").ok());
}

}  // namespace
}  // namespace tokenmeter::common
