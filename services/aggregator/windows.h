// Window math: which storage buckets a point in time falls into, and which buckets make up a
// sliding minute or a calendar hour / day / month in a time zone. Pure functions; thread-safe.
//
// Storage keeps two kinds of buckets (see storage/key_codec.h):
//  - 10-second sub-buckets aligned to the unix epoch (time-zone free). A sliding minute at
//    time t is the sum of the 7 sub-buckets starting at floor10(t) - 60 s .. floor10(t): a
//    superset of (t - 60 s, t], so usage in any 60 s interval never exceeds a minute limit
//    (the price: the window is up to 10 s longer than a minute, never shorter).
//  - calendar buckets (hour, day, month), one per time zone in use, keyed by the instant the
//    window starts. Two zones whose windows start at the same instant share the bucket.
#ifndef TOKENMETER_SERVICES_AGGREGATOR_WINDOWS_H_
#define TOKENMETER_SERVICES_AGGREGATOR_WINDOWS_H_

#include <cstdint>

#include "absl/time/time.h"
#include "services/aggregator/model.h"

namespace tokenmeter::aggregator {

inline constexpr int64_t kSubBucketSeconds = 10;
inline constexpr int kSlidingMinuteBuckets = 7;

// Returns the start of the 10 s sub-bucket containing t (floor, also for times before 1970).
absl::Time SubBucketStart(absl::Time t);

// The sub-buckets of the sliding minute ending at t: `first` is the oldest bucket start,
// `last` the newest (containing t); last - first == 60 s.
struct SubBucketRange {
  absl::Time first;
  absl::Time last;
};
SubBucketRange SlidingMinuteBuckets(absl::Time t);

// Returns the start of the calendar window (kHour, kDay or kMonth) containing t in tz.
// Hours are real hours: across a DST fall-back the repeated local hour is two windows, and a
// half-hour-offset zone's hours start at :30 UTC. A day is local midnight to local midnight
// (23 or 25 hours on DST change days); a month is local midnight of the 1st to the next 1st.
// kMinute is not a calendar window: returns SubBucketStart(t).
absl::Time CalendarWindowStart(WindowKind window, absl::Time t, const absl::TimeZone& tz);

// Returns the start of the calendar window after the one containing t (its exclusive end).
// For kMinute returns SubBucketStart(t) + 10 s.
absl::Time CalendarWindowEnd(WindowKind window, absl::Time t, const absl::TimeZone& tz);

}  // namespace tokenmeter::aggregator

#endif  // TOKENMETER_SERVICES_AGGREGATOR_WINDOWS_H_
