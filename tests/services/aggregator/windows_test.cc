#include "services/aggregator/windows.h"

#include <string>

#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace tokenmeter::aggregator {
namespace {

absl::TimeZone Zone(const std::string& name) {
  absl::TimeZone tz;
  EXPECT_TRUE(absl::LoadTimeZone(name, &tz)) << name;
  return tz;
}

absl::Time Utc(int year, int month, int day, int hour, int minute, int second = 0) {
  return absl::FromCivil(absl::CivilSecond(year, month, day, hour, minute, second),
                         absl::UTCTimeZone());
}

std::string Iso(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E*SZ", t, absl::UTCTimeZone());
}

// Renders the window of `kind` containing t as "start..end" in UTC.
std::string Window(WindowKind kind, absl::Time t, const absl::TimeZone& tz) {
  return Iso(CalendarWindowStart(kind, t, tz)) + ".." + Iso(CalendarWindowEnd(kind, t, tz));
}

TEST(SubBucketStartTest, FloorsToTenSecondsSinceEpoch) {
  EXPECT_EQ(Iso(SubBucketStart(Utc(2026, 5, 4, 12, 0, 19) + absl::Milliseconds(999))),
            "2026-05-04T12:00:10Z");
  EXPECT_EQ(Iso(SubBucketStart(Utc(2026, 5, 4, 12, 0, 20))), "2026-05-04T12:00:20Z");
  EXPECT_EQ(SubBucketStart(absl::UnixEpoch()), absl::UnixEpoch());
}

TEST(SubBucketStartTest, FloorsNegativeTimesDownward) {
  EXPECT_EQ(SubBucketStart(absl::FromUnixNanos(-1)), absl::FromUnixSeconds(-10));
  EXPECT_EQ(SubBucketStart(absl::FromUnixSeconds(-10)), absl::FromUnixSeconds(-10));
  EXPECT_EQ(SubBucketStart(absl::FromUnixMillis(-10'001)), absl::FromUnixSeconds(-20));
}

TEST(SubBucketStartTest, InfiniteTimesAreUnchanged) {
  EXPECT_EQ(SubBucketStart(absl::InfiniteFuture()), absl::InfiniteFuture());
  EXPECT_EQ(SubBucketStart(absl::InfinitePast()), absl::InfinitePast());
}

TEST(SlidingMinuteBucketsTest, SevenBucketsEndingAtTheBucketOfT) {
  const SubBucketRange range = SlidingMinuteBuckets(Utc(2026, 5, 4, 12, 0, 5));
  EXPECT_EQ(Iso(range.first), "2026-05-04T11:59:00Z");
  EXPECT_EQ(Iso(range.last), "2026-05-04T12:00:00Z");
  EXPECT_EQ(range.last - range.first, absl::Seconds(60));
}

TEST(SlidingMinuteBucketsTest, CoversTheLastSixtySeconds) {
  for (int offset_ms = 0; offset_ms < 10'000; offset_ms += 250) {
    const absl::Time t = Utc(2026, 5, 4, 12, 0, 0) + absl::Milliseconds(offset_ms);
    const SubBucketRange range = SlidingMinuteBuckets(t);
    EXPECT_LE(range.first, t - absl::Seconds(60)) << Iso(t);
    EXPECT_LE(t, range.last + absl::Seconds(kSubBucketSeconds)) << Iso(t);
    EXPECT_LT(range.last + absl::Seconds(kSubBucketSeconds) - range.first, absl::Seconds(71));
  }
}

TEST(CalendarWindowTest, MinuteIsTheSubBucket) {
  const absl::Time t = Utc(2026, 5, 4, 12, 0, 17);
  EXPECT_EQ(Window(WindowKind::kMinute, t, absl::UTCTimeZone()),
            "2026-05-04T12:00:10Z..2026-05-04T12:00:20Z");
}

TEST(CalendarWindowTest, UtcHourDayMonth) {
  const absl::TimeZone utc = absl::UTCTimeZone();
  const absl::Time t = Utc(2026, 2, 28, 23, 59, 59) + absl::Milliseconds(500);
  EXPECT_EQ(Window(WindowKind::kHour, t, utc), "2026-02-28T23:00:00Z..2026-03-01T00:00:00Z");
  EXPECT_EQ(Window(WindowKind::kDay, t, utc), "2026-02-28T00:00:00Z..2026-03-01T00:00:00Z");
  EXPECT_EQ(Window(WindowKind::kMonth, t, utc), "2026-02-01T00:00:00Z..2026-03-01T00:00:00Z");
}

TEST(CalendarWindowTest, MonthInNewYorkSpansTheDstStart) {
  // 2026-03-31 23:30 EDT is 2026-04-01 03:30 UTC: still March locally.
  const absl::Time t = Utc(2026, 4, 1, 3, 30);
  EXPECT_EQ(Window(WindowKind::kMonth, t, Zone("America/New_York")),
            "2026-03-01T05:00:00Z..2026-04-01T04:00:00Z");
}

TEST(CalendarWindowTest, NewYorkDstStartDayHas23Hours) {
  const absl::TimeZone ny = Zone("America/New_York");
  const absl::Time t = Utc(2026, 3, 8, 12, 0);
  EXPECT_EQ(Window(WindowKind::kDay, t, ny), "2026-03-08T05:00:00Z..2026-03-09T04:00:00Z");
  EXPECT_EQ(
      CalendarWindowEnd(WindowKind::kDay, t, ny) - CalendarWindowStart(WindowKind::kDay, t, ny),
      absl::Hours(23));
  // 01:30 EST is followed directly by 03:00 EDT.
  EXPECT_EQ(Window(WindowKind::kHour, Utc(2026, 3, 8, 6, 30), ny),
            "2026-03-08T06:00:00Z..2026-03-08T07:00:00Z");
  EXPECT_EQ(Window(WindowKind::kHour, Utc(2026, 3, 8, 7, 30), ny),
            "2026-03-08T07:00:00Z..2026-03-08T08:00:00Z");
}

TEST(CalendarWindowTest, NewYorkDstEndDayHas25Hours) {
  const absl::TimeZone ny = Zone("America/New_York");
  const absl::Time t = Utc(2026, 11, 1, 12, 0);
  EXPECT_EQ(Window(WindowKind::kDay, t, ny), "2026-11-01T04:00:00Z..2026-11-02T05:00:00Z");
  EXPECT_EQ(
      CalendarWindowEnd(WindowKind::kDay, t, ny) - CalendarWindowStart(WindowKind::kDay, t, ny),
      absl::Hours(25));
}

TEST(CalendarWindowTest, RepeatedHourAtFallBackIsTwoWindows) {
  const absl::TimeZone ny = Zone("America/New_York");
  // Both instants are 01:30 local on 2026-11-01: first EDT (-4), then EST (-5).
  const absl::Time first_pass = Utc(2026, 11, 1, 5, 30);
  const absl::Time second_pass = Utc(2026, 11, 1, 6, 30);
  ASSERT_EQ(ny.At(first_pass).cs, ny.At(second_pass).cs);
  EXPECT_EQ(Window(WindowKind::kHour, first_pass, ny),
            "2026-11-01T05:00:00Z..2026-11-01T06:00:00Z");
  EXPECT_EQ(Window(WindowKind::kHour, second_pass, ny),
            "2026-11-01T06:00:00Z..2026-11-01T07:00:00Z");
}

TEST(CalendarWindowTest, KolkataHoursStartAtHalfPastUtc) {
  const absl::TimeZone kolkata = Zone("Asia/Kolkata");
  // 2026-05-04 10:15 IST (+05:30).
  const absl::Time t = Utc(2026, 5, 4, 4, 45);
  EXPECT_EQ(Window(WindowKind::kHour, t, kolkata), "2026-05-04T04:30:00Z..2026-05-04T05:30:00Z");
  EXPECT_EQ(Window(WindowKind::kDay, t, kolkata), "2026-05-03T18:30:00Z..2026-05-04T18:30:00Z");
}

TEST(CalendarWindowTest, LordHoweHalfHourDstStartGivesAHalfHourWindow) {
  const absl::TimeZone lord_howe = Zone("Australia/Lord_Howe");
  // 2026-10-04 02:00 +10:30 (15:30 UTC the day before) jumps to 02:30 +11.
  EXPECT_EQ(Window(WindowKind::kHour, Utc(2026, 10, 3, 15, 15), lord_howe),
            "2026-10-03T14:30:00Z..2026-10-03T15:30:00Z");
  EXPECT_EQ(Window(WindowKind::kHour, Utc(2026, 10, 3, 15, 45), lord_howe),
            "2026-10-03T15:30:00Z..2026-10-03T16:00:00Z");
  EXPECT_EQ(Window(WindowKind::kHour, Utc(2026, 10, 3, 16, 0), lord_howe),
            "2026-10-03T16:00:00Z..2026-10-03T17:00:00Z");
}

TEST(CalendarWindowTest, LordHoweHalfHourDstEndRepeatsHalfAnHour) {
  const absl::TimeZone lord_howe = Zone("Australia/Lord_Howe");
  // 2026-04-05 02:00 +11 (15:00 UTC the day before) falls back to 01:30 +10:30.
  EXPECT_EQ(Window(WindowKind::kHour, Utc(2026, 4, 4, 14, 45), lord_howe),
            "2026-04-04T14:00:00Z..2026-04-04T15:00:00Z");
  EXPECT_EQ(Window(WindowKind::kHour, Utc(2026, 4, 4, 15, 15), lord_howe),
            "2026-04-04T15:00:00Z..2026-04-04T15:30:00Z");
  EXPECT_EQ(Window(WindowKind::kHour, Utc(2026, 4, 4, 15, 30), lord_howe),
            "2026-04-04T15:30:00Z..2026-04-04T16:30:00Z");
}

TEST(CalendarWindowTest, SkippedMidnightStartsTheDayAtTheJump) {
  // Brazil's DST began at 2018-11-04 00:00 -03, which became 01:00 -02.
  const absl::TimeZone sao_paulo = Zone("America/Sao_Paulo");
  EXPECT_EQ(Window(WindowKind::kDay, Utc(2018, 11, 4, 12, 0), sao_paulo),
            "2018-11-04T03:00:00Z..2018-11-05T02:00:00Z");
  EXPECT_EQ(Window(WindowKind::kDay, Utc(2018, 11, 4, 2, 59, 59), sao_paulo),
            "2018-11-03T03:00:00Z..2018-11-04T03:00:00Z");
}

// Every instant lies in exactly one window of each kind: windows are contiguous and disjoint.
TEST(CalendarWindowTest, WindowsPartitionTimeAcrossTransitions) {
  const struct {
    const char* zone;
    absl::CivilDay from;
  } kCases[] = {
      {"America/New_York", absl::CivilDay(2026, 3, 6)},
      {"America/New_York", absl::CivilDay(2026, 10, 30)},
      {"Australia/Lord_Howe", absl::CivilDay(2026, 4, 3)},
      {"Australia/Lord_Howe", absl::CivilDay(2026, 10, 2)},
      {"America/Sao_Paulo", absl::CivilDay(2018, 11, 2)},
      {"Asia/Kolkata", absl::CivilDay(2026, 2, 27)},
  };
  for (const auto& c : kCases) {
    const absl::TimeZone tz = Zone(c.zone);
    const absl::Time begin = absl::FromCivil(c.from, absl::UTCTimeZone());
    for (absl::Time t = begin; t < begin + absl::Hours(96); t += absl::Minutes(7)) {
      for (const WindowKind kind : {WindowKind::kHour, WindowKind::kDay, WindowKind::kMonth}) {
        const absl::Time start = CalendarWindowStart(kind, t, tz);
        const absl::Time end = CalendarWindowEnd(kind, t, tz);
        SCOPED_TRACE(std::string(c.zone) + " " + WindowKindName(kind) + " " + Iso(t));
        ASSERT_LE(start, t);
        ASSERT_LT(t, end);
        ASSERT_EQ(CalendarWindowStart(kind, end, tz), end);
        ASSERT_EQ(CalendarWindowEnd(kind, start, tz), end);
        ASSERT_EQ(CalendarWindowStart(kind, end - absl::Nanoseconds(1), tz), start);
      }
    }
  }
}

}  // namespace
}  // namespace tokenmeter::aggregator
